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


NETWORK = '''
from zoo.ms_bert import MsBertConfig, MsBertModel
def small():
    return MsBertModel(MsBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=32, max_position_embeddings=16))
'''


def test_a_ckpt_is_pruned_into_the_network_and_written_as_ckpt(tmp_path):
    """The command line gives the same Cell as the Python API, saved as DIR/model.ckpt."""
    mindspore = pytest.importorskip("mindspore")
    import numpy as np

    from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
    from zoo.ms_bert import MsBertConfig, MsBertModel, save_ckpt

    mindspore.set_context(mode=mindspore.PYNATIVE_MODE)
    big = MsBertModel(MsBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=16))
    save_ckpt(big, tmp_path / "big.ckpt")
    (tmp_path / "msnet.py").write_text(NETWORK)
    run = run_cli("prune-transformer", "big.ckpt", "--network", "msnet:small", "--layer-map", "0:0,1:3",
                  "--importance", "weight", "--out", "out", cwd=tmp_path)
    assert run.rc == 0, run.stderr
    import msnet

    expected = msnet.small()
    prune_model_weight(expected, PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"])
                       .add_blocks_params(r"encoder\.layer\.(\d+)\.", {0: 0, 1: 3}).set_importance("weight"),
                       str(tmp_path / "big.ckpt"))
    written = mindspore.load_checkpoint(str(tmp_path / "out" / "model.ckpt"))
    for name, param in expected.parameters_dict().items():
        assert np.array_equal(written[name].asnumpy(), param.asnumpy()), name
    assert (tmp_path / "out" / "prune_report.json").exists()
