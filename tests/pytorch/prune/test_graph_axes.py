"""Channel bookkeeping through splits, concatenations, transposes and shared layers (graph_axes.py): the groups the
dependency graph reports follow the tensor axis the layers actually read, and the models they describe prune."""
import copy
import logging

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from msmodelslim.pytorch.prune.graph import trace_groups
from msmodelslim.pytorch.prune.prune_torch import PruneTorch
from zoo.graph_fuzz import computes_dense_without_removed


class ChunkedBranches(nn.Module):
    """A projection chunked into two halves read by different layers, then concatenated (token tensors)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(12, 40)
        self.first = nn.Linear(20, 24)
        self.second = nn.Linear(20, 32)
        self.head = nn.Linear(56, 5)

    def forward(self, x):
        a, b = torch.relu(self.proj(x)).chunk(2, dim=2)
        # the second half is used first, so the trace meets the parts out of order
        late = self.second(b)
        return self.head(torch.cat([self.first(a), late], dim=-1)).mean(1)


class TokenSplit(nn.Module):
    """A class token split off the token axis: every channel goes on to both consumers."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.cls_head = nn.Linear(32, 16)
        self.body = nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        cls, rest = torch.split(self.embed(x), [1, x.shape[1] - 1], dim=1)
        return self.head(self.cls_head(cls)[:, 0] + self.body(rest).mean(1))


class TokenMixer(nn.Module):
    """MLP-Mixer style: a Linear over the token axis (transpose in, transpose out) inside a residual stream."""

    def __init__(self, tokens=6, width=32):
        super().__init__()
        self.embed = nn.Linear(10, width)
        self.mix = nn.Linear(tokens, tokens)
        self.up = nn.Linear(width, 64)
        self.down = nn.Linear(64, width)
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.mix(h.transpose(1, 2)).transpose(1, 2)
        h = h + self.down(torch.relu(self.up(h)))
        return self.head(h.mean(1))


class FixedSplit(nn.Module):
    """A split whose sizes are written in the forward code: the projection cannot lose a channel."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 40)
        self.a = nn.Linear(30, 16)
        self.b = nn.Linear(10, 16)
        self.hidden = nn.Linear(16, 48)
        self.head = nn.Linear(48, 2)

    def forward(self, x):
        a, b = torch.split(self.proj(x), [30, 10], dim=-1)
        return self.head(torch.relu(self.hidden(self.a(a) + self.b(b))))


class SharedLayer(nn.Module):
    """One Linear called twice in a chain, between two prunable layers."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 48)
        self.shared = nn.Linear(48, 48)
        self.out_hidden = nn.Linear(48, 64)
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        h = self.shared(torch.relu(self.shared(torch.relu(self.inp(x)))))
        return self.head(torch.relu(self.out_hidden(h)))


class NarrowConcat(nn.Module):
    """A concatenation of a 2-channel branch and a 40-channel branch, added to a 42-channel layer: one group in
    which each branch holds only some of the units."""

    def __init__(self):
        super().__init__()
        self.narrow = nn.Linear(8, 2)
        self.wide = nn.Linear(8, 40)
        self.skip = nn.Linear(8, 42)
        self.head = nn.Linear(42, 3)

    def forward(self, x):
        return self.head(torch.cat([self.narrow(x), self.wide(x)], dim=-1) + self.skip(x))


class FlattenBesideTokens(nn.Module):
    """An image path that ends in a flatten into a Linear, beside a text path of 3-D token tensors: torch-pruning
    maps flattens only when every tensor of the model is 2-D or 4-D."""

    def __init__(self, concat=False):
        super().__init__()
        self.concat = concat
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.image_head = nn.Linear((32 if concat else 16) * 2 * 2, 5)
        self.embed = nn.Embedding(40, 12)
        self.text_head = nn.Linear(12, 5)

    def forward(self, image, ids):
        features = self.conv(image)
        features = torch.relu(self.depthwise(features))
        if self.concat:  # the flatten then reads the concatenation, not a layer
            features = torch.cat([self.conv(image), features], 1)
        pooled = nn.functional.adaptive_avg_pool2d(features, 2)
        return self.image_head(pooled.flatten(1)) + self.text_head(self.embed(ids)).mean(1)


class FlattenedIntoAStream(nn.Module):
    """Pooled image features flattened (16 channels x 2 x 2) and added to a Linear's 64 outputs: each channel's
    four features are one unit of the sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.BatchNorm2d(16)
        self.side = nn.Linear(20, 64)
        self.head = nn.Linear(64, 5)

    def forward(self, image, vector):
        pooled = nn.functional.adaptive_avg_pool2d(torch.relu(self.norm(self.conv(image))), 2)
        return self.head(pooled.flatten(1) + self.side(vector))


class ConcatThenTokenMix(nn.Module):
    """Two projections concatenated along the channels, then a Linear over the token axis (transpose in and out)
    added back: the token mixer reads tokens, not the concatenated channels."""

    def __init__(self, tokens=9):
        super().__init__()
        self.left, self.right = nn.Linear(8, 12), nn.Linear(8, 12)
        self.mix = nn.Linear(tokens, tokens)
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        h = torch.cat([torch.relu(self.left(x)), self.right(x)], dim=2)
        h = h + self.mix(h.transpose(1, 2)).transpose(1, 2)
        return self.head(h).mean(1)


class HalfInAResidual(nn.Module):
    """A projection chunked in two: its first half is added to a later layer's outputs, its second half feeds that
    layer's branch. The graph meets the later layer first, with half of the projection's channels."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 28)
        self.branch = nn.Linear(14, 6)
        self.back = nn.Linear(6, 14)
        self.head = nn.Linear(14, 3)

    def forward(self, x):
        first, second = torch.relu(self.proj(x)).chunk(2, dim=-1)
        return self.head(first + self.back(torch.relu(self.branch(second))))


class Shuffled(nn.Module):
    """ShuffleNet's channel shuffle between two convolutions: channel i of ``first`` reaches input
    (i % 4) * 2 + i // 4 of ``second``."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(3, 8, 1)
        self.second = nn.Conv2d(8, 12, 3, padding=1)
        self.head = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        n, c, h, w = (y := torch.relu(self.first(x))).shape
        shuffled = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(torch.relu(self.second(shuffled)))


def _groups(model, x):
    return trace_groups(model, lambda m: m(x))


def _member(groups, target, role):
    for group in groups:
        for member in group.members:
            if member.target == target and member.role == role:
                return group, member
    raise AssertionError(f"{target} ({role}) is in no group")


def _prune_and_replay(model, x, ratio, un_prune_list, align):
    fresh = copy.deepcopy(model)
    shape = model(x).shape
    before = sum(p.numel() for p in model.parameters())
    desc = PruneTorch(model, x, align=align).prune(ratio, un_prune_list)
    with torch.no_grad():
        out = model(x)
    assert out.shape == shape
    PruneTorch(fresh, x).prune_by_desc(desc)
    torch.testing.assert_close(fresh(x), out)
    return sum(p.numel() for p in model.parameters()) / before


def test_chunk_parts_are_mapped_in_tensor_order_and_lose_the_same_channels():
    torch.manual_seed(0)
    model, x = ChunkedBranches(), torch.randn(2, 5, 12)
    group, proj = _member(_groups(model, x), "proj", "output")
    _, first = _member([group], "first", "input")
    _, second = _member([group], "second", "input")
    unit_of_channel = dict(zip(proj.idxs, proj.roots))
    # channel j of each half is one unit: removing it keeps the halves equal, as chunk needs
    assert group.size == 20
    assert dict(zip(first.idxs, first.roots)) == {j: unit_of_channel[j] for j in range(20)}
    assert dict(zip(second.idxs, second.roots)) == {j: unit_of_channel[20 + j] for j in range(20)}
    assert unit_of_channel[3] == unit_of_channel[23]

    kept = _prune_and_replay(model, x, 0.6, un_prune_list=["head"], align=2)
    assert abs(kept - 0.6) <= 0.02
    assert model.first.in_features == model.second.in_features == model.proj.out_features // 2 < 20


def test_a_split_of_the_token_axis_leaves_every_channel_to_every_consumer():
    model, x = TokenSplit(), torch.randn(2, 7, 8)
    group, embed = _member(_groups(model, x), "embed", "output")
    for consumer in ("cls_head", "body"):
        _, member = _member([group], consumer, "input")
        assert sorted(member.idxs) == list(range(32))
        assert dict(zip(member.idxs, member.roots)) == dict(zip(embed.idxs, embed.roots))
    assert group.protected is None


def test_a_token_mixing_layer_is_not_coupled_with_the_channels_it_carries():
    torch.manual_seed(0)
    model, x = TokenMixer(), torch.randn(2, 6, 10)
    groups = _groups(model, x)
    stream, _ = _member(groups, "embed", "output")
    assert "mix" not in stream.member_targets() and stream.protected is None
    assert {"down", "up", "head"} <= set(stream.member_targets())

    kept = _prune_and_replay(model, x, 0.6, un_prune_list=["head"], align=1)
    assert abs(kept - 0.6) <= 0.02
    assert (model.mix.in_features, model.mix.out_features) == (6, 6)  # the token count is the input's
    assert model.embed.out_features < 32


def test_a_split_with_sizes_in_the_forward_code_protects_its_channels(caplog):
    torch.manual_seed(0)
    model, x = FixedSplit(), torch.randn(3, 8)
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        kept = _prune_and_replay(model, x, 0.8, un_prune_list=["head"], align=1)
    assert "a split into parts of sizes written in the forward code" in caplog.text
    assert model.proj.out_features == 40 and model.hidden.out_features < 48
    assert kept < 0.85


def test_a_layer_called_twice_is_pruned_consistently():
    torch.manual_seed(0)
    model, x = SharedLayer(), torch.randn(3, 8)
    group, _ = _member(_groups(model, x), "inp", "output")
    assert {("shared", "input"), ("shared", "output")} <= {(m.target, m.role) for m in group.members}
    kept = _prune_and_replay(model, x, 0.5, un_prune_list=["head"], align=1)
    assert abs(kept - 0.5) <= 0.02
    assert model.shared.in_features == model.shared.out_features == model.inp.out_features < 48


@pytest.mark.parametrize("ratio", [0.6, 0.75])
def test_a_concatenated_part_never_loses_all_its_channels(ratio):
    torch.manual_seed(0)
    model, x = NarrowConcat(), torch.randn(3, 8)
    with torch.no_grad():  # the narrow branch is the least important one
        for tensor in (model.narrow.weight, model.narrow.bias, model.skip.weight[:2], model.skip.bias[:2],
                       model.head.weight[:, :2]):
            tensor.mul_(1e-3)
    kept = _prune_and_replay(model, x, ratio, un_prune_list=["head"], align=1)
    assert abs(kept - ratio) <= 0.02
    assert model.narrow.out_features >= 1
    assert model.head.in_features == model.narrow.out_features + model.wide.out_features == model.skip.out_features


def test_a_split_inside_a_cycle_of_the_graph_does_not_loop():
    """Falcon's fused query/key/value projection is split into parts that meet again; mapping an index from a part
    back to the whole tensor must not add the part's offset around that cycle forever (the graph build hung)."""
    import transformers as T

    from msmodelslim.pytorch.prune.prune_torch import CallParams

    cfg = T.FalconConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=32)
    torch.manual_seed(0)
    model = T.FalconForCausalLM(cfg).eval()
    batch = CallParams(input_ids=torch.randint(2, 96, (2, 8), generator=torch.Generator().manual_seed(1)))
    groups = trace_groups(model, batch, timeout_s=60)
    assert groups and all(g.size > 0 for g in groups)


@pytest.mark.parametrize("concat", [False, True], ids=["layer", "concatenation"])
def test_a_flatten_maps_each_channel_to_its_features_whatever_the_other_tensors_ranks(concat):
    torch.manual_seed(0)
    model = FlattenBesideTokens(concat)
    inputs = (torch.randn(2, 3, 8, 8), torch.randint(0, 40, (2, 6)))
    group, member = _member(trace_groups(model, lambda m: m(*inputs)), "image_head", "input")
    assert sorted(member.idxs) == list(range(model.image_head.in_features))
    assert member.indices_of_units([3]) == ([12, 13, 14, 15, 76, 77, 78, 79] if concat else [12, 13, 14, 15])
    fresh = copy.deepcopy(model)
    desc = PruneTorch(model, inputs, align=1).prune(0.7, un_prune_list=["image_head", "text_head"])
    assert model.image_head.in_features == 4 * (2 if concat else 1) * model.depthwise.out_channels
    assert model.depthwise.out_channels < 16
    PruneTorch(fresh, inputs).prune_by_desc(desc)
    torch.testing.assert_close(fresh(*inputs), model(*inputs))


def test_a_flattened_channel_added_to_a_layer_loses_its_features_with_the_layer_outputs_they_meet():
    torch.manual_seed(0)
    model, inputs = FlattenedIntoAStream().eval(), (torch.randn(2, 3, 8, 8), torch.randn(2, 20))
    group, side = _member(trace_groups(model, lambda m: m(*inputs)), "side", "output")
    _, norm = _member([group], "norm", "input")
    assert group.protected is None and group.size == 16
    unit = dict(zip(norm.idxs, norm.roots))[3]
    assert sorted(i for i, r in zip(side.idxs, side.roots) if r == unit) == [12, 13, 14, 15]

    original, fresh = copy.deepcopy(model), copy.deepcopy(model)
    desc = PruneTorch(model, inputs, align=1).prune(0.6, un_prune_list=["head"])
    assert model.side.out_features == model.head.in_features == 4 * model.conv.out_channels < 64
    assert computes_dense_without_removed(original, model, desc, inputs)
    PruneTorch(fresh, inputs).prune_by_desc(desc)
    torch.testing.assert_close(fresh(*inputs), model(*inputs))


def test_pooled_features_summed_with_a_layer_and_chunked_keep_one_feature_per_channel():
    """``adaptive_avg_pool2d(x, 1).flatten(1)`` maps channel c to feature c; torch-pruning infers a flatten's
    stride from the next layer's width, which the chunk halves (it paired channel c with features 2c, 2c + 1)."""

    class PooledChunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.side = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(10, 16)
            self.head, self.head2 = nn.Linear(8, 5), nn.Linear(8, 5)

        def forward(self, image, vector):
            pooled = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(image)), 1).flatten(1)
            a, b = torch.chunk(pooled + self.side(vector), 2, dim=-1)
            return self.head(torch.relu(a)) + self.head2(b)

    torch.manual_seed(0)
    model, inputs = PooledChunk().eval(), (torch.randn(2, 3, 8, 8), torch.randn(2, 10))
    group, conv = _member(trace_groups(model, lambda m: m(*inputs)), "conv", "output")
    assert group.protected is None and sorted(conv.idxs) == list(range(16))
    original, fresh = copy.deepcopy(model), copy.deepcopy(model)
    desc = PruneTorch(model, inputs, align=1).prune(0.6, un_prune_list=["head", "head2"])
    assert model.conv.out_channels == model.side.out_features == 2 * model.head.in_features < 16
    assert computes_dense_without_removed(original, model, desc, inputs)
    PruneTorch(fresh, inputs).prune_by_desc(desc)
    torch.testing.assert_close(fresh(*inputs), model(*inputs))


def test_a_token_mixer_after_a_channel_concatenation_leaves_the_concatenated_layers_prunable():
    torch.manual_seed(0)
    model, x = ConcatThenTokenMix().eval(), torch.randn(2, 9, 8)
    group, _ = _member(_groups(model, x), "left", "output")
    assert group.protected is None and "mix" not in group.member_targets()
    kept = _prune_and_replay(model, x, 0.6, un_prune_list=["head"], align=1)
    assert abs(kept - 0.6) <= 0.02
    assert model.left.out_features < 12 and (model.mix.in_features, model.mix.out_features) == (9, 9)
    assert model.head.in_features == model.left.out_features + model.right.out_features


def test_a_class_token_concatenated_before_the_patches_is_not_taken_for_channels():
    """ViT's embedding: patches (conv, flatten, transpose) concatenated after a class token along the token axis;
    the stream stays one prunable group from the patch convolution to the head."""

    class ClassTokenStem(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 24, 4, stride=4)
            self.cls = nn.Parameter(torch.randn(1, 1, 24))
            self.norm = nn.LayerNorm(24)
            self.mlp_in, self.mlp_out = nn.Linear(24, 48), nn.Linear(48, 24)
            self.head = nn.Linear(24, 3)

        def forward(self, image):
            patches = self.patch(image).flatten(2).transpose(1, 2)
            h = self.norm(torch.cat([self.cls.expand(image.shape[0], -1, -1), patches], dim=1))
            h = h + self.mlp_out(torch.relu(self.mlp_in(h)))
            return self.head(h[:, 0])

    torch.manual_seed(0)
    model, x = ClassTokenStem().eval(), torch.randn(2, 3, 16, 16)
    group, _ = _member(_groups(model, x), "patch", "output")
    assert {"norm", "mlp_out", "head"} <= set(group.member_targets())


def test_a_chunk_half_of_which_meets_another_layer_is_pruned_with_both_halves_equal():
    torch.manual_seed(0)
    model, x = HalfInAResidual().eval(), torch.randn(4, 8)
    group, proj = _member(_groups(model, x), "proj", "output")
    _, back = _member([group], "back", "output")
    _, branch = _member([group], "branch", "input")
    assert group.protected is None and group.size == 14 and sorted(proj.idxs) == list(range(28))
    unit = dict(zip(proj.idxs, proj.roots))
    assert unit[3] == unit[17] == dict(zip(back.idxs, back.roots))[3] == dict(zip(branch.idxs, branch.roots))[3]
    original, fresh = copy.deepcopy(model), copy.deepcopy(model)
    desc = PruneTorch(model, x, align=1).prune(0.6, un_prune_list=["head"])
    assert model.proj.out_features == 2 * model.back.out_features == 2 * model.branch.in_features < 28
    assert computes_dense_without_removed(original, model, desc, x)
    PruneTorch(fresh, x).prune_by_desc(desc)
    torch.testing.assert_close(fresh(x), model(x))


@pytest.mark.parametrize("size", [6, 8], ids=["distinct-lengths", "height-width-and-channels-alike"])
def test_channels_reordered_by_a_shuffle_follow_their_new_places(size):
    """Before, the shuffle was taken for the identity: pruning channel i of ``first`` removed input i of ``second``,
    which reads another channel - a model that runs, with the wrong weights. Now every group of the shuffle loses
    the same places, and the pruned model computes what the dense one does without the removed channels."""
    torch.manual_seed(0)
    model, x = Shuffled(), torch.randn(2, 3, size, size)  # 8 x 8 images of 8 channels: the axes look alike
    group, member = _member(_groups(model, x), "first", "output")
    assert group.protected is None and group.size == 4  # place b of both groups is one unit
    consumer = next(m for m in group.members if m.target == "second")
    assert consumer.indices_of_units(member.roots[1:2]) == [2, 3]  # channels 1 and 5 come out at 2 and 3
    dense = copy.deepcopy(model)
    desc = PruneTorch(model, x, align=1).prune(0.7, un_prune_list=["head", "second"])
    removed = [i for i, c in enumerate(desc["first"]["output"][1]) if c != "-"]
    assert removed and len(removed) % 2 == 0 and model.first.out_channels == 8 - len(removed)
    with torch.no_grad():  # the removed channels silenced in the dense model: relu(0) = 0 reaches nothing
        dense.first.weight[removed] = 0
        dense.first.bias[removed] = 0
        torch.testing.assert_close(model(x), dense(x))


def test_a_shuffle_whose_order_cannot_be_followed_protects_its_channels(caplog):
    torch.manual_seed(0)
    model, x = Shuffled(), torch.randn(2, 3, 6, 6)
    # the same shuffle, done by one permute that also swaps height and width: not the swap it knows
    model.forward = lambda inp: model.head(torch.relu(model.second(
        torch.relu(model.first(inp)).view(2, 2, 4, 6, 6).permute(0, 2, 1, 4, 3).reshape(2, 8, 6, 6))))
    group, _ = _member(_groups(model, x), "first", "output")
    assert "a channel shuffle whose channel order cannot be followed" in group.protected


class Reordered(nn.Module):
    """A stem whose channels are reordered before the next layer reads them."""

    def __init__(self, reorder):
        super().__init__()
        self.reorder = reorder
        self.stem = nn.Conv2d(3, 16, 1)
        self.body = nn.Conv2d(16, 12, 3, padding=1)
        self.head = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.body(self.reorder(torch.relu(self.stem(x))))))


@pytest.mark.parametrize("reorder, followed", [
    (nn.ChannelShuffle(4), True),
    (lambda y: y.flip(1), False),
    (lambda y: torch.roll(y, 1, 1), False),
    (lambda y: torch.cat([y[:, 4:], y[:, :4]], 1), False),  # positions written in the forward code
], ids=["channel_shuffle", "flip", "roll", "fixed_slices"])
def test_channels_reordered_by_an_operation_are_followed_or_protected_never_paired_wrongly(reorder, followed):
    torch.manual_seed(0)
    model, x = Reordered(reorder), torch.randn(2, 3, 6, 6)
    dense = copy.deepcopy(model)
    group, _ = _member(_groups(model, x), "stem", "output")
    assert (group.protected is None) == followed
    desc = PruneTorch(model, x, align=1).prune(0.7, un_prune_list=["head"])
    assert (model.stem.out_channels < 16) == followed and model.body.out_channels < 12
    assert computes_dense_without_removed(dense, model, desc, x)


class HeadsByMinusOne(nn.Module):
    """Plain attention that cuts its channels into heads with ``view(b, t, self.heads, -1)`` (``split="heads"``: an
    attribute that can follow the pruning), ``view(b, t, 4, -1)`` (``split="literal"``: a number in the code, so
    fewer channels would be cut into smaller heads, each reading parts of two) or ``view(b, t, -1, head_size)``
    (``split="size"``: whole heads can go)."""

    def __init__(self, dim=32, heads=4, split="heads", sdpa=False, size_first_merge=False):
        super().__init__()
        self.heads, self.head_size, self.split, self.sdpa = heads, dim // heads, split, sdpa
        self.size_first_merge = size_first_merge  # o reads channel p * heads + h
        self.embed = nn.Linear(6, dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        h = self.embed(x)
        b, t, _ = h.shape
        shape = {"heads": (b, t, self.heads, -1), "literal": (b, t, 4, -1), "size": (b, t, -1, self.head_size)}
        shape = shape[self.split]
        q, k, v = (p(h).view(*shape).transpose(1, 2) for p in (self.q, self.k, self.v))
        if self.sdpa:
            attended = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            attended = torch.softmax(q @ k.transpose(-1, -2) / self.head_size ** 0.5, -1) @ v
        merged = attended.permute(0, 2, 3, 1) if self.size_first_merge else attended.transpose(1, 2)
        return self.head(h + self.o(merged.reshape(b, t, -1))).mean(1)


def test_channels_cut_into_a_fixed_number_of_heads_are_protected(caplog):
    torch.manual_seed(0)
    model, x = HeadsByMinusOne(split="literal"), torch.randn(2, 5, 6)
    dense = copy.deepcopy(model)
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        desc = PruneTorch(model, x, align=1).prune(0.7, un_prune_list=["head"])
    assert "so the heads would mix" in caplog.text
    assert model.q.out_features == model.k.out_features == model.v.out_features == 32
    assert model.embed.out_features < 32  # the residual stream is pruned
    assert computes_dense_without_removed(dense, model, desc, x)
    fresh = copy.deepcopy(dense)  # the desc, replayed, keeps the attention whole
    PruneTorch(fresh, x).prune_by_desc(desc)
    assert fresh.q.out_features == 32


@pytest.mark.parametrize("split, sdpa", [("size", False), ("size", True), ("heads", False)])
def test_attention_written_by_hand_loses_whole_heads(split, sdpa):
    """q, k, v and o's inputs are one group (the products couple them); its units are whole heads, and a head
    count attribute that forward() passes to view follows: the pruned model computes exactly what the dense one
    does without those heads."""
    torch.manual_seed(0)
    model, x = HeadsByMinusOne(split=split, sdpa=sdpa), torch.randn(2, 5, 6)
    dense, fresh = copy.deepcopy(model), copy.deepcopy(model)
    desc = PruneTorch(model, x, align=1).prune(0.6, un_prune_list=["head"])
    assert model.q.out_features == model.k.out_features == model.v.out_features == model.o.in_features < 32
    assert model.q.out_features % 8 == 0
    assert desc["__meta__"]["head_splits"] == [[32, 4, 8]]
    assert desc["__meta__"]["patches"] == {"": {"heads": model.q.out_features // 8}}
    assert computes_dense_without_removed(dense, model, desc, x)
    PruneTorch(fresh, x).prune_by_desc(desc)
    torch.testing.assert_close(fresh(x), model(x))


def test_heads_merged_head_size_first_are_protected(caplog):
    """o reads channel ``p * heads + h``: with whole heads removed it would lose the wrong inputs."""
    torch.manual_seed(0)
    model, x = HeadsByMinusOne(split="size", size_first_merge=True), torch.randn(2, 5, 6)
    dense = copy.deepcopy(model)
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        desc = PruneTorch(model, x, align=1).prune(0.6, un_prune_list=["head"])
    assert "head size first" in caplog.text
    assert model.q.out_features == model.o.in_features == 32
    assert computes_dense_without_removed(dense, model, desc, x)


def test_a_head_size_equal_to_the_head_count_is_not_patched_as_one():
    """8 heads of 8: ``head_size`` equals the old head count, but only ``heads`` counts heads (the softmax scale
    reads ``head_size``)."""
    torch.manual_seed(0)
    model, x = HeadsByMinusOne(dim=64, heads=8), torch.randn(2, 5, 6)
    dense = copy.deepcopy(model)
    desc = PruneTorch(model, x, align=1).prune(0.6, un_prune_list=["head"])
    assert model.q.out_features < 64 and model.head_size == 8
    assert desc["__meta__"]["patches"] == {"": {"heads": model.q.out_features // 8}}
    assert computes_dense_without_removed(dense, model, desc, x)


def test_a_desc_whose_heads_a_model_would_recut_is_refused_with_the_model_unchanged():
    """The same desc on the attention that fixes its number of heads: replayed, the check finds the smaller heads."""
    torch.manual_seed(0)
    source, x = HeadsByMinusOne(split="size"), torch.randn(2, 5, 6)
    desc = PruneTorch(source, x, align=1).prune(0.6, un_prune_list=["head"])
    target = HeadsByMinusOne(split="literal")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="the heads would mix"):
        PruneTorch(target, x).prune_by_desc(desc)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


@pytest.mark.parametrize("splits", [[[32, 4, 7]], [[32, 4]], "x", [[0, 0, 0]]])
def test_a_malformed_head_split_in_a_desc_is_refused(splits):
    torch.manual_seed(0)
    model, x = HeadsByMinusOne(split="size"), torch.randn(2, 5, 6)
    desc = PruneTorch(copy.deepcopy(model), x, align=1).prune(0.6, un_prune_list=["head"])
    desc["__meta__"]["head_splits"] = splits
    with pytest.raises(ValueError, match="head_splits"):
        PruneTorch(model, x).prune_by_desc(desc)
    assert model.q.out_features == 32


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads=st.sampled_from([2, 4, 8]), head_size=st.sampled_from([2, 4, 8]),
       split=st.sampled_from(["size", "heads", "literal"]), sdpa=st.booleans(), size_first_merge=st.booleans(),
       ratio=st.sampled_from([0.5, 0.6, 0.8]), seed=st.integers(0, 2 ** 16))
def test_hand_written_attention_is_pruned_exactly_or_protected(heads, head_size, split, sdpa, size_first_merge,
                                                               ratio, seed):
    """Whatever the layout: the pruned model computes the dense one without the removed channels, keeps whole
    heads of the old size, and replays equal."""
    torch.manual_seed(seed)
    dim = heads * head_size
    model = HeadsByMinusOne(dim=dim, heads=heads, split=split, sdpa=sdpa, size_first_merge=size_first_merge)
    if split == "literal" and heads != 4:
        model.split = "heads"  # the literal is written for 4 heads
    x = torch.randn(2, 5, 6)
    dense, fresh = copy.deepcopy(model), copy.deepcopy(model)
    desc = PruneTorch(model, x, align=1).prune(ratio, un_prune_list=["head"])
    assert model.q.out_features % head_size == 0 and model.q.out_features == model.o.in_features
    assert computes_dense_without_removed(dense, model, desc, x)
    PruneTorch(fresh, x).prune_by_desc(desc)
    torch.testing.assert_close(fresh(x), model(x))
