"""What every subcommand shares: user errors, atomic output directories, calibration text, model loading."""
import argparse
import contextlib
import json
import os
import shutil
import tempfile

from msmodelslim.errors import ModelslimError


class UsageError(ModelslimError, ValueError):
    """A mistake in the command line: printed as one line, exit code 2."""

    code = 2


def positive_ratio(text):
    """A float in (0, 1), for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def existing_path(text, what):
    if not os.path.exists(text):
        raise UsageError(f"{what} '{text}' does not exist")
    return text


@contextlib.contextmanager
def atomic_directory(out):
    """Yield a temporary directory beside ``out``; on success it replaces ``out``, on failure it disappears."""
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    try:
        yield staging
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def calibration_texts(source):
    """Texts for calibration: ``wiki`` (the Wikipedia train split), a ``.txt`` file (blank-line separated) or a
    ``.jsonl`` file (one ``{"text": ...}`` per line)."""
    from msmodelslim import assets

    if source == "wiki":
        return assets.wiki_split()[0]
    existing_path(source, "--calib file")
    with open(source, encoding="utf-8") as handle:
        if source.endswith(".jsonl"):
            texts = []
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        texts.append(json.loads(line)["text"])
                    except (ValueError, KeyError, TypeError):
                        raise UsageError(f"--calib {source}: line {number} is not a JSON object with a 'text' "
                                         f"field") from None
            return texts
        if source.endswith(".txt"):
            return [part for part in handle.read().split("\n\n") if part.strip()]
    raise UsageError(f"--calib must be 'wiki', a .txt or a .jsonl file, got '{source}'")


def token_chunks(tokenizer, texts, samples, seq_len):
    """``samples`` chunks of ``seq_len`` tokens of the calibration texts (a user error when they are too short)."""
    from msmodelslim.assets import token_chunks as chunks

    try:
        return chunks(tokenizer, texts, samples, seq_len, name="the calibration text")
    except ValueError as exc:
        raise UsageError(f"{exc} Lower --samples or --seq-len.") from None


def load_causal_lm(path):
    """``(model, tokenizer)`` from a Hugging Face directory or a GGUF file, in float32 and eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    existing_path(path, "MODEL")
    if path.endswith(".gguf"):
        folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # a GGUF-tagged config cannot be saved
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        return model.eval(), tokenizer
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UsageError(f"MODEL must be a Hugging Face directory (with config.json) or a .gguf file, got '{path}'")
    return (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(path))


def directory_size(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
