"""Token positions folded into the channel axis (graph_tiling.py), cross-attention through nn.MultiheadAttention, and
pooling heads whose result is dropped: each couples the residual stream to layers the dependency graph used to pair
with the wrong channels (or not at all), so the stream stayed protected or the pruned model broke."""
import copy
import logging

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from msmodelslim.pytorch.prune import graph_tiling
from msmodelslim.pytorch.prune.prune_torch import CallParams, PruneTorch
from zoo.graph_fuzz import computes_dense_without_removed


class FoldedTokens(nn.Module):
    """A residual stream of tokens, folded ``scale`` x ``scale`` into channels (SmolVLM's / Idefics3's pixel
    shuffle: two reshapes that each merge token positions into the last axis, around permutes), then projected."""

    def __init__(self, width=32, scale=2, side=4):
        super().__init__()
        self.scale, self.side = scale, side
        self.embed = nn.Linear(12, width)
        self.up, self.down = nn.Linear(width, 64), nn.Linear(64, width)
        self.proj = nn.Linear(width * scale * scale, 20)
        self.head = nn.Linear(20, 5)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.down(torch.relu(self.up(h)))
        b, n, c = h.shape
        s, side = self.scale, self.side
        h = h.view(b, side, side, c).view(b, side, side // s, c * s).permute(0, 2, 1, 3)
        h = h.reshape(b, side // s, side // s, c * s * s).permute(0, 2, 1, 3).reshape(b, n // s ** 2, c * s * s)
        return self.head(torch.relu(self.proj(h))).mean(1)


class FoldedImage(nn.Module):
    """A fold of an image's width into its last axis: the last axis is the width, not the channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.proj = nn.Linear(16, 6)

    def forward(self, x):
        h = torch.relu(self.conv(x))  # (b, 8, 8, 8): height = width = channels
        return self.proj(h.reshape(2, 8, 4, 16)).mean((1, 2))


def _kept(dense, pruned, name):
    """Indices of the dense layer's output rows that the pruned layer kept."""
    before, after = dense.get_submodule(name).weight, pruned.get_submodule(name).weight
    return [i for i in range(before.shape[0]) if any(torch.equal(before[i], row) for row in after)]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scale=st.sampled_from([2, 3]), width=st.sampled_from([16, 24, 32]), ratio=st.floats(0.4, 0.8))
def test_a_fold_of_tokens_into_channels_prunes_every_copy_of_a_channel(scale, width, ratio):
    torch.manual_seed(0)
    model, x = FoldedTokens(width, scale, side=2 * scale), torch.randn(2, 4 * scale * scale, 12)
    dense = copy.deepcopy(model)
    desc = PruneTorch(model, x, align=1).prune(ratio, un_prune_list=["head"])
    assert model.embed.out_features < width  # the stream is pruned, not protected
    kept = _kept(dense, model, "embed")
    columns = [copy * width + c for copy in range(scale * scale) for c in kept]
    assert model.proj.in_features == len(columns)
    rows = [i for i in range(20) if any(torch.equal(dense.proj.weight[i, columns], row) for row in model.proj.weight)]
    torch.testing.assert_close(model.proj.weight, dense.proj.weight[rows][:, columns], rtol=0, atol=0)
    assert computes_dense_without_removed(dense, model, desc, x)
    replayed = copy.deepcopy(dense)
    PruneTorch(replayed, x).prune_by_desc(desc)
    torch.testing.assert_close(replayed(x), model(x))


def _folds(model, x):
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    return sorted(graph_tiling.correct(graph).values())


def test_only_folds_of_the_channel_axis_are_mapped():
    """Both token folds of the pixel shuffle are mapped; a fold of an image's width (height = width = channels = 8,
    channels on axis 1) is not: its last axis holds width positions."""
    assert _folds(FoldedTokens(), torch.randn(2, 16, 12)) == [2, 2]
    assert _folds(FoldedImage(), torch.randn(2, 3, 8, 8)) == []


class AttentionPool(nn.Module):
    """SigLIP's pooling head: a learned probe attends over the tokens (nn.MultiheadAttention with query != key),
    then a residual MLP."""

    def __init__(self, width):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, width))
        self.attention = nn.MultiheadAttention(width, 4, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.up, self.down = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, h):
        pooled = self.attention(self.probe.repeat(h.shape[0], 1, 1), h, h)[0]
        return (pooled + self.down(torch.relu(self.up(self.norm(pooled)))))[:, 0]


class PooledEncoder(nn.Module):
    """Tokens through residual MLP blocks, pooled by :class:`AttentionPool`; with ``drop_pool`` the pooled result
    is computed and dropped (a vision tower whose caller reads the tokens), and the tokens feed the head."""

    def __init__(self, width=32, drop_pool=False):
        super().__init__()
        self.drop_pool = drop_pool
        self.embed = nn.Linear(16, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 64), nn.GELU(),
                                                  nn.Linear(64, width)) for _ in range(2))
        self.pool = AttentionPool(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = h + block(h)
        pooled = self.pool(h)
        return self.head(h.mean(1) if self.drop_pool else pooled)


@pytest.mark.parametrize("drop_pool", [False, True], ids=["pooled", "pool-dropped"])
def test_cross_attention_and_its_pooling_head_prune_with_the_stream(drop_pool, caplog):
    torch.manual_seed(0)
    model, x = PooledEncoder(drop_pool=drop_pool).eval(), torch.randn(2, 8, 16)
    dense = copy.deepcopy(model)
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        desc = PruneTorch(model, x).prune(0.6)
    assert "sizes written in the forward code" not in caplog.text
    width, kept = 32, _kept(dense, model, "embed")
    assert len(kept) < width and model.pool.attention.embed_dim == len(kept)
    rows = kept + [width + k for k in kept] + [2 * width + k for k in kept]  # query, key, value: same channels
    attention, original = model.pool.attention, dense.pool.attention
    scale = torch.ones(len(rows), 1)
    scale[:len(kept)] = (len(kept) / width) ** 0.5  # the query, for the smaller head size (see the test below)
    torch.testing.assert_close(attention.in_proj_weight, original.in_proj_weight[rows][:, kept] * scale)
    torch.testing.assert_close(attention.in_proj_bias, original.in_proj_bias[rows] * scale[:, 0])
    torch.testing.assert_close(attention.out_proj.weight, original.out_proj.weight[kept][:, kept], rtol=0, atol=0)
    assert model.pool.down.out_features == len(kept)  # the head's residual sum is pruned with the stream
    assert model(x).shape == (2, 10)
    replayed = copy.deepcopy(dense)
    PruneTorch(replayed, CallParams(x)).prune_by_desc(desc)
    torch.testing.assert_close(replayed(x), model(x))


class SelfAttentionEncoder(nn.Module):
    """A pre-norm transformer block on nn.MultiheadAttention (query = key = value)."""

    def __init__(self, width=32, heads=4):
        super().__init__()
        self.embed = nn.Linear(10, width)
        self.norm = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.up, self.down = nn.Linear(width, 64), nn.Linear(64, width)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        h = self.embed(x)
        n = self.norm(h)
        h = h + self.attention(n, n, n, need_weights=False)[0]
        return self.head(h + self.down(torch.relu(self.up(h)))).mean(1)


@pytest.mark.parametrize("model_class", [SelfAttentionEncoder, PooledEncoder])
def test_attention_loses_the_same_places_in_every_head_and_keeps_its_temperature(model_class):
    """Every head keeps the same places (uneven losses would shift the head boundaries and mix heads), and the
    query is scaled for the smaller head size: the pruned model computes the dense one without the removed
    channels, exactly."""
    torch.manual_seed(0)
    model, x = model_class().eval(), torch.randn(2, 8, 10 if model_class is SelfAttentionEncoder else 16)
    dense = copy.deepcopy(model)
    desc = PruneTorch(model, x).prune(0.6)
    attention = next(m for m in model.modules() if isinstance(m, nn.MultiheadAttention))
    assert attention.embed_dim < 32
    kept = _kept(dense, model, "embed")
    places = [[k % 8 for k in kept if k // 8 == head] for head in range(4)]
    assert all(p == places[0] for p in places)
    assert computes_dense_without_removed(dense, model, desc, x)


class ChannelsLastFlatten(nn.Module):
    """Convolution features made channels-last and flattened into a Linear: channel ``c`` of the convolution is
    input ``j * C + c`` of the Linear (torch-pruning maps it as the channels-first flatten ``c * h * w + j``)."""

    def __init__(self, how, channels=16, side=4):
        super().__init__()
        self.how = how
        self.first, self.second = nn.Conv2d(3, channels, 3, padding=1), nn.Conv2d(channels, channels, 3, padding=1)
        self.fc, self.out = nn.Linear(channels * side * side, 10), nn.Linear(10, 3)

    def forward(self, x):
        h = torch.relu(self.second(torch.relu(self.first(x))))
        if self.how == "permute":
            h = h.permute(0, 2, 3, 1).flatten(1)
        elif self.how == "reshape":
            h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
        else:
            h = h.transpose(1, 3).flatten(1)
        return self.out(torch.relu(self.fc(h)))


@pytest.mark.parametrize("how", ["permute", "reshape", "transpose"])
def test_a_channels_last_flatten_of_convolution_features_pairs_each_channel_with_its_inputs(how):
    torch.manual_seed(0)
    model, x = ChannelsLastFlatten(how).eval(), torch.randn(2, 3, 4, 4)
    dense = copy.deepcopy(model)
    desc = PruneTorch(model, x).prune(0.6, un_prune_list=[-1])
    kept = [i for i, mark in enumerate(desc["second"]["output"][1]) if mark == "-"]
    assert len(kept) < 16
    removed = [i for i, mark in enumerate(desc["fc"]["input"][1]) if mark != "-"]
    assert removed == sorted(j * 16 + c for j in range(16) for c in range(16) if c not in kept)
    assert computes_dense_without_removed(dense, model, desc, x)


def test_a_desc_that_keeps_more_of_one_head_than_of_another_is_refused():
    """embed_dim 24 of 32 is divisible by the 4 heads, but removing head 0 whole would make the new heads read
    channels of two old heads each."""
    torch.manual_seed(0)
    model, x = SelfAttentionEncoder().eval(), torch.randn(2, 5, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    marks = "".join("x" if i < 8 else "-" for i in range(32))
    entry = [24, marks]
    desc = {"embed": {"output": entry}, "norm": {"output": entry}, "attention": {"output": entry},
            "up": {"input": entry}, "down": {"output": entry}, "head": {"input": entry}}
    with pytest.raises(ValueError, match=r"every head must keep as many channels .* \[0, 8, 8, 8\]"):
        PruneTorch(model, x).prune_by_desc(desc)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_transformer_encoder_layer_prunes_exactly():
    """nn.TransformerEncoderLayer (its own attention and norms, fused fast path in eval mode)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0),
                          nn.Linear(32, 3)).eval()
    x, dense = torch.randn(2, 5, 6), copy.deepcopy(model)
    desc = PruneTorch(model, x).prune(0.6, un_prune_list=[-1])
    assert model[1].self_attn.embed_dim < 32
    assert computes_dense_without_removed(dense, model, desc, x)
