"""Fixtures of the bad-input sweep (shared/reference/bad-input-2026-11-26.md): real tiny models on disk and a way to
run the command line in this process (fast) or in a child process (for signals)."""
import contextlib
import dataclasses
import io
import os
import subprocess
import sys

import pytest
import torch

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(os.path.dirname(sys.executable), "msmodelslim")
FAST = ["--samples", "2", "--seq-len", "32", "--eval-samples", "2"]


@dataclasses.dataclass
class Run:
    rc: int
    stdout: str
    stderr: str

    @property
    def error_lines(self):
        return [line for line in self.stderr.splitlines() if line.strip()]


def _llama(tokenizer, layers, ffn=128):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, intermediate_size=ffn,
                                        tie_word_embeddings=True))


@pytest.fixture(scope="session")
def fx(tmp_path_factory):
    """``tiny`` (2-layer Llama speaking SmolLM2's tokenizer), ``big4`` (4 layers) and ``small_config.json`` (2 layers,
    FFN 64), as Hugging Face directories in a read-only-by-convention fixture folder."""
    from transformers import AutoTokenizer

    from msmodelslim import assets

    root = tmp_path_factory.mktemp("fx")
    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_135m_dir())
    for name, layers in (("tiny", 2), ("big4", 4)):
        model = _llama(tokenizer, layers)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    small = _llama(tokenizer, 2, ffn=64)
    small.config.architectures = ["LlamaForCausalLM"]
    (root / "small_config.json").write_text(small.config.to_json_string())
    return root


def run_cli(*args, cwd=None):
    """``msmodelslim ARGS`` in this process: returns the exit code and what it printed."""
    from msmodelslim.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in args])
            except SystemExit as exc:  # argparse
                rc = exc.code
    finally:
        os.chdir(previous)
    return Run(rc, out.getvalue(), err.getvalue())


def run_process(*args, cwd=None, timeout=300, code=None):
    """``msmodelslim ARGS`` in a child process, or ``python -c CODE ARGS`` when ``code`` is given."""
    env = {**os.environ, "PYTHONPATH": TESTS, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", code, *map(str, args)] if code else [SCRIPT, *map(str, args)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def snapshot(root):
    """Every file below ``root`` with its bytes: compare before and after to prove nothing was lost."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                with open(path, "rb") as handle:
                    files[os.path.relpath(path, root)] = handle.read()
    return files
