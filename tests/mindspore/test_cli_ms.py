"""``msmodelslim prune-transformer`` with a MindSpore checkpoint: the small Cell comes from ``--network``."""
import pytest
from zoo.cli_runner import run_cli


@pytest.mark.parametrize("args, words", [
    pytest.param(["big.ckpt", "--small-config", "small.json"], ["--network"], id="ckpt-without-network"),
    pytest.param(["big.ckpt", "--small-config", "small.json", "--network", "m:f"], ["either"], id="both"),
    pytest.param(["big.ckpt"], ["either"], id="neither"),
    pytest.param(["big.ckpt", "--network", "m:f", "--importance", "activation"], ["Python API"], id="activation"),
    pytest.param(["big.ckpt", "--network", "nosuchmodule:f"], ["--network"], id="bad-network"),
])
def test_mindspore_command_line_mistakes_exit_2(tmp_path, args, words):
    (tmp_path / "big.ckpt").write_bytes(b"not really")
    (tmp_path / "small.json").write_text("{}")
    run = run_cli("prune-transformer", *args, "--steps", "prune_bert_intra_block", "--out", tmp_path / "out",
                  cwd=tmp_path)
    assert run.rc == 2, run.stderr
    assert len(run.error_lines) == 1 and all(w in run.error_lines[0] for w in words), run.stderr
    assert not (tmp_path / "out").exists()
