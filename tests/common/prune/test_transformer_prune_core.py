"""The framework-free core of prune_model_weight: renames, the original's slices and weight importance on NumPy
arrays; the front door imports no framework, and the PyTorch path runs where MindSpore cannot be imported."""
import os
import subprocess
import sys
import textwrap

import numpy as np

from msmodelslim.common.prune.transformer_prune.blocks import rename_blocks
from msmodelslim.common.prune.transformer_prune.entries import initial_entries, read_numpy
from msmodelslim.common.prune.transformer_prune.leading import fused_thirds, leading_slice
from msmodelslim.common.prune.transformer_prune.weight_importance import channel_norms, top_indices


class ArrayCheckpoint:
    """The checkpoint interface (keys, shape, get) over a dict of NumPy arrays."""

    def __init__(self, arrays):
        self.arrays = arrays

    def keys(self):
        return list(self.arrays)

    def shape(self, key):
        return self.arrays[key].shape

    def get(self, key):
        return self.arrays[key]


def test_fused_thirds_keep_the_first_part_of_each_third_as_the_original():
    checkpoint = ArrayCheckpoint({"qkv.weight": np.arange(12 * 2).reshape(12, 2)})
    entry = fused_thirds(initial_entries(checkpoint)["qkv.weight"], "qkv.weight", (12, 2), (6, 2))
    assert entry.selections[0][1].tolist() == [0, 1, 4, 5, 8, 9]
    assert np.array_equal(read_numpy(entry, checkpoint), checkpoint.arrays["qkv.weight"][[0, 1, 4, 5, 8, 9]])


def test_leading_slice_reads_a_fresh_contiguous_block():
    weights = np.arange(6 * 8, dtype=np.float32).reshape(6, 8)
    checkpoint = ArrayCheckpoint({"w": weights})
    entry = leading_slice(initial_entries(checkpoint)["w"], (6, 8), (4, 3))
    read = read_numpy(entry, checkpoint)
    assert entry.shape(checkpoint) == (4, 3) and np.array_equal(read, weights[:4, :3])
    assert read.flags["C_CONTIGUOUS"] and not np.shares_memory(read, weights)


def test_rename_blocks_keeps_drops_and_duplicates_layers():
    entries = initial_entries(ArrayCheckpoint({f"layer.{i}.w": np.zeros(1) for i in range(4)} | {"head": np.zeros(1)}))
    renamed = rename_blocks(entries, [{"pattern": r"layer\.(\d+)\.", "layer_id_map": {0: 3, 1: 3, 2: 0}}])
    assert {k: v.source for k, v in renamed.items()} == {"layer.0.w": "layer.3.w", "layer.1.w": "layer.3.w",
                                                       "layer.2.w": "layer.0.w", "head": "head"}


def test_top_indices_break_ties_to_the_lower_index_and_norms_are_mean_normalised():
    assert top_indices([1.0, 3.0, 3.0, 2.0, 3.0], 2) == [1, 2]
    norms = channel_norms(np.array([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]]), 0)
    assert np.allclose(norms, [1.0, 0.0, 2.0])


NO_MINDSPORE = """
import sys
sys.modules["mindspore"] = None  # `import mindspore` raises ImportError from here on
import msmodelslim.common.prune.transformer_prune.prune_model as front
assert "torch" not in sys.modules, "the front door imported torch"
import torch, transformers as T
torch.manual_seed(0)
shape = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, max_position_embeddings=16)
big = T.BertModel(T.BertConfig(num_hidden_layers=4, intermediate_size=64, **shape))
torch.save(big.state_dict(), {path!r})
small = T.BertModel(T.BertConfig(num_hidden_layers=2, intermediate_size=32, **shape))
config = (front.PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"])
          .add_blocks_params(r"encoder\\.layer\\.(\\d+)\\.", {{0: 1, 1: 3}}).set_importance("weight"))
front.prune_model_weight(small, config, {path!r})
assert torch.equal(small.encoder.layer[1].attention.self.key.weight, big.encoder.layer[3].attention.self.key.weight)
assert sys.modules["mindspore"] is None
print("ok")
"""


def test_the_torch_path_runs_where_mindspore_cannot_be_imported(tmp_path):
    script = NO_MINDSPORE.format(path=str(tmp_path / "big.pt"))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
