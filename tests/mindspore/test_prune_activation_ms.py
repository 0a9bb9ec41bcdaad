"""prune_model_weight with MindSpore Cells, data-driven: activation importance and layer_id_map="auto" choose as
the torch backend does on the same calibration data, and the big Cell is left exactly as it was (parameters,
train/eval flags, no hook left), also when a calibration batch fails."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

mindspore = pytest.importorskip("mindspore")

from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight  # noqa: E402
from zoo.ms_bert import MsBertConfig, MsBertModel, save_ckpt  # noqa: E402

LAYER = r"encoder\.layer\.(\d+)\."
LAYER_MAP = {0: 0, 1: 2, 2: 5}
STEPS = ["prune_blocks", "prune_bert_intra_block"]
MAX_LENGTH = 64


@pytest.fixture(scope="module", autouse=True)
def _pynative_cpu():
    mindspore.set_context(mode=mindspore.PYNATIVE_MODE)
    mindspore.set_device("CPU")


def snapshot(cell):
    return {k: (p, p.asnumpy().copy()) for k, p in cell.parameters_dict().items()}


def unchanged(cell, saved):
    """Same Parameter objects holding the same values."""
    params = cell.parameters_dict()
    return sorted(params) == sorted(saved) and all(
        params[k] is p and np.array_equal(p.asnumpy(), value) for k, (p, value) in saved.items())


def hooked_cells(cell):
    """Names of the sub-cells that still carry a forward (pre-)hook."""
    return [name for name, sub in cell.cells_and_names() if sub._forward_hook or sub._forward_pre_hook]


def prune_config(importance="first", dataset=None, big=None, layer_map=None, steps=STEPS):
    return (PruneConfig().set_steps(list(steps)).add_blocks_params(LAYER, layer_map or LAYER_MAP)
            .set_importance(importance, dataset, model=big))


# ------------------------------------------------------------------------------------------- real MiniLM weights
@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """The MindSpore MiniLM and its .ckpt, the Hugging Face teacher, and the same calibration batches for both
    (16 Wikipedia sentences in 2 batches) and held-out sentences."""
    import transformers as T

    from msmodelslim import assets
    from zoo.ms_bert import minilm_l6_ms

    big = minilm_l6_ms()
    ckpt = save_ckpt(big, tmp_path_factory.mktemp("minilm") / "minilm.ckpt")
    tokenizer = assets.minilm_tokenizer()
    train, test = assets.wiki_split()
    batches = [tokenizer(train[i:i + 8], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np")
               for i in (0, 8)]
    ms_data = [{k: mindspore.Tensor(v.astype(np.int32)) for k, v in b.items()} for b in batches]
    import torch

    torch_data = [{k: torch.as_tensor(v.astype(np.int64)) for k, v in b.items()} for b in batches]
    teacher = T.BertModel.from_pretrained(assets.minilm_l6_dir()).eval()
    return dict(big=big, ckpt=ckpt, directory=assets.minilm_l6_dir(), tokenizer=tokenizer, held_out=test[:32],
                ms_data=ms_data, torch_data=torch_data, teacher=teacher)


def small_pair(directory, **shape):
    import transformers as T

    cell = MsBertModel(MsBertConfig.from_json_file(directory / "config.json", num_hidden_layers=3, **shape))
    return cell, T.BertModel(T.BertConfig.from_pretrained(directory, num_hidden_layers=3, **shape)).eval()


def ms_cosine(cell, teacher, m):
    from zoo.ms_bert import sentence_embeddings_ms

    student = sentence_embeddings_ms(cell, m["tokenizer"], m["held_out"], max_length=MAX_LENGTH)
    return float((student * teacher).sum(-1).mean())


@pytest.mark.slow
def test_activation_importance_matches_the_torch_backend_and_beats_first(minilm):
    from msmodelslim.pytorch.utils.evaluation import sentence_embeddings
    from zoo.ms_bert import sentence_embeddings_ms

    m = minilm
    saved = snapshot(m["big"])
    ms_teacher = sentence_embeddings_ms(m["big"], m["tokenizer"], m["held_out"], max_length=MAX_LENGTH)
    cosine = {}
    for importance in ("first", "activation"):
        cell, _ = small_pair(m["directory"], intermediate_size=768)
        dataset = m["ms_data"] if importance == "activation" else None
        big = m["big"] if importance == "activation" else None
        prune_model_weight(cell, prune_config(importance, dataset, big), m["ckpt"])
        cosine[importance] = ms_cosine(cell, ms_teacher, m)
    assert unchanged(m["big"], saved) and not hooked_cells(m["big"])

    _, torch_model = small_pair(m["directory"], intermediate_size=768)
    prune_model_weight(torch_model, prune_config("activation", m["torch_data"], m["teacher"]), str(m["directory"]))
    torch_teacher = sentence_embeddings(m["teacher"], m["tokenizer"], m["held_out"], max_length=MAX_LENGTH)
    torch_student = sentence_embeddings(torch_model, m["tokenizer"], m["held_out"], max_length=MAX_LENGTH)
    cosine["torch activation"] = float((torch_student * torch_teacher).sum(-1).mean())
    print(f"\nMiniLM-L6 -> 3 layers, FFN 768, mean cosine to the teacher: {cosine}")

    assert abs(cosine["activation"] - cosine["torch activation"]) <= 0.01
    assert cosine["activation"] >= cosine["first"] + 0.03
    for layer in range(3):  # the same FFN neurons: the down projection's kept columns are equal
        np.testing.assert_allclose(cell.encoder.layer[layer].output.dense.weight.asnumpy(),
                                   torch_model.encoder.layer[layer].output.dense.weight.detach().numpy(), atol=1e-6)


@pytest.mark.slow
def test_activation_importance_keeps_the_torch_backend_heads_and_hidden_channels(minilm):
    from zoo.ms_bert import hf_name

    m = minilm
    shape = dict(hidden_size=256, num_attention_heads=8)
    cell, torch_model = small_pair(m["directory"], **shape)
    ms_config = prune_config("activation", m["ms_data"], m["big"], layer_map={0: 0, 1: 3, 2: 5})
    torch_config = prune_config("activation", m["torch_data"], m["teacher"], layer_map={0: 0, 1: 3, 2: 5})
    prune_model_weight(cell, ms_config, m["ckpt"])
    prune_model_weight(torch_model, torch_config, str(m["directory"]))
    assert ms_config.report == torch_config.report
    assert any(heads != list(range(8)) for heads in ms_config.report["heads"].values())
    reference = torch_model.state_dict()  # equal values: equal hidden channels and heads, in the same order
    for key, value in cell.parameters_dict().items():
        np.testing.assert_allclose(value.asnumpy(), reference[hf_name(key)].numpy(), atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_auto_layer_map_keeps_the_torch_backend_layers(minilm):
    m = minilm
    saved = snapshot(m["big"])
    cell, torch_model = small_pair(m["directory"])
    ms_config = prune_config("first", m["ms_data"], m["big"], layer_map="auto", steps=["prune_blocks"])
    torch_config = prune_config("first", m["torch_data"], m["teacher"], layer_map="auto", steps=["prune_blocks"])
    prune_model_weight(cell, ms_config, m["ckpt"])
    prune_model_weight(torch_model, torch_config, str(m["directory"]))
    print(f"\nlayer_id_map='auto' keeps {ms_config.report['layers']} (torch: {torch_config.report['layers']})")
    assert ms_config.report["layers"] == torch_config.report["layers"]
    assert ms_config.prune_blocks_params[0]["layer_id_map"] == "auto"  # the config is left as given
    assert unchanged(m["big"], saved) and not hooked_cells(m["big"])


# ------------------------------------------------------------------------------------------- tiny model
def tiny_config(**overrides):
    values = dict(vocab_size=64, hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=16)
    return MsBertConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    big = MsBertModel(tiny_config())
    big.set_train(False)
    rng = np.random.default_rng(0)
    data = [{"input_ids": mindspore.Tensor(rng.integers(0, 64, (2, 8)).astype(np.int32))} for _ in range(2)]
    return big, save_ckpt(big, tmp_path_factory.mktemp("tiny") / "big.ckpt"), data


def tiny_small(**overrides):
    return MsBertModel(tiny_config(num_hidden_layers=3, intermediate_size=32, **overrides))


def test_one_call_with_auto_and_activation_equals_the_two_separately(tiny):
    big, ckpt, data = tiny
    auto_only = prune_config("first", data, big, layer_map="auto", steps=["prune_blocks"])
    prune_model_weight(MsBertModel(tiny_config(num_hidden_layers=3)), auto_only, ckpt)
    layers = auto_only.report["layers"]
    both, separately = tiny_small(), tiny_small()
    prune_model_weight(both, prune_config("activation", data, big, layer_map="auto"), ckpt)
    prune_model_weight(separately, prune_config("activation", data, big, layer_map=layers), ckpt)
    expected = separately.parameters_dict()
    assert all(np.array_equal(p.asnumpy(), expected[k].asnumpy()) for k, p in both.parameters_dict().items())


def test_a_big_cell_in_train_mode_keeps_its_flags(tiny):
    _, ckpt, data = tiny
    big = MsBertModel(tiny_config())
    big.set_train(True)
    big.encoder.layer[1].set_train(False)  # mixed flags come back as they were
    flags = {name: (sub.training, sub.phase) for name, sub in big.cells_and_names()}
    prune_model_weight(tiny_small(), prune_config("activation", data, big), ckpt)
    assert {name: (sub.training, sub.phase) for name, sub in big.cells_and_names()} == flags


def test_missing_calibration_data_or_big_cell_is_a_value_error(tiny):
    big, ckpt, data = tiny
    cell = tiny_small()
    saved = snapshot(cell)
    with pytest.raises(ValueError, match="needs dataset"):
        PruneConfig().set_importance("activation")
    with pytest.raises(ValueError, match="needs the big MindSpore Cell"):
        prune_model_weight(cell, prune_config("activation", data), ckpt)
    with pytest.raises(ValueError, match="needs calibration data"):
        prune_model_weight(cell, prune_config("first", layer_map="auto"), ckpt)
    with pytest.raises(ValueError, match="layer_id_map='auto' needs the big MindSpore Cell"):
        prune_model_weight(cell, prune_config("weight", data, layer_map="auto"), ckpt)
    assert unchanged(cell, saved)


def test_bad_batches_and_patterns_raise_and_leave_both_cells(tiny):
    big, ckpt, data = tiny
    cell = tiny_small()
    saved, saved_big = snapshot(cell), snapshot(big)
    with pytest.raises(TypeError, match=r"dataset\[1\] must be a mindspore Tensor"):
        prune_model_weight(cell, prune_config("activation", [data[0], np.zeros((2, 8))], big), ckpt)
    empty = {"input_ids": mindspore.Tensor(np.zeros((0, 8), np.int32))}
    with pytest.raises(ValueError, match=r"dataset\[0\] is empty"):
        prune_model_weight(cell, prune_config("activation", [empty], big), ckpt)
    failing = {"input_ids": data[0]["input_ids"], "no_such_argument": data[0]["input_ids"]}
    with pytest.raises(RuntimeError, match=r"dataset\[1\]: the big Cell failed"):
        prune_model_weight(cell, prune_config("activation", [data[0], failing], big, layer_map="auto"), ckpt)
    with pytest.raises(ValueError, match="matches none of the big model's blocks"):  # blocks: encoder.layer.N
        prune_model_weight(cell, PruneConfig().set_steps(STEPS).add_blocks_params(r"encoder\.layer\.(\d+)\.attention",
                                                                                  "auto")
                           .set_importance("first", data, model=big), ckpt)
    with pytest.raises(ValueError, match="the small model has 8 layers"):
        prune_model_weight(MsBertModel(tiny_config(num_hidden_layers=8)),
                           prune_config("first", data, big, layer_map="auto", steps=["prune_blocks"]), ckpt)
    assert unchanged(cell, saved) and unchanged(big, saved_big) and not hooked_cells(big)


NO_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` raises ImportError from here on
sys.path.insert(0, {tests!r})
import numpy as np
import mindspore
mindspore.set_context(mode=mindspore.PYNATIVE_MODE)
mindspore.set_device("CPU")
from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
from zoo.ms_bert import MsBertConfig, MsBertModel, save_ckpt
shape = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, max_position_embeddings=16)
big = MsBertModel(MsBertConfig(num_hidden_layers=4, intermediate_size=64, **shape))
path = save_ckpt(big, {ckpt!r})
data = [(mindspore.Tensor(np.arange(16, dtype=np.int32).reshape(2, 8)),)]
small = MsBertModel(MsBertConfig(num_hidden_layers=2, intermediate_size=32, **shape))
config = (PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"])
          .add_blocks_params(r"encoder\\.layer\\.(\\d+)\\.", "auto").set_importance("activation", data, model=big))
prune_model_weight(small, config, path)
assert len(config.report["layers"]) == 2 and sys.modules["torch"] is None
print("ok")
"""


def test_activation_and_auto_run_where_torch_cannot_be_imported(tmp_path):
    script = NO_TORCH.format(tests=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             ckpt=str(tmp_path / "big.ckpt"))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
