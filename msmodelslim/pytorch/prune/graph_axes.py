"""Corrections to torch-pruning's channel index maps where it loses track of the tensor axis.

torch-pruning maps channel indices through ``split``/``chunk`` and ``cat`` by the position of each part, and through
every other operation as if the channels stayed where they were. Read against the shapes autograd records for each
operation, three cases go wrong:

- the parts of a split are numbered in the order the trace met their consumers, not their order in the tensor,
  and a part nobody reads shifts the numbering of the rest;
- a split or concatenation is taken for a channel one or not by the number of its dimension (1, or a negative one),
  so ``chunk(2, dim=2)`` of tokens ``(batch, tokens, channels)`` is ignored and a split of an image's width is
  treated as a split of its channels;
- a transpose or permute that moves the channels to an axis the next layer does not read (token mixing) still
  couples them with that layer's channels;
- a flatten of ``(batch, channels, height, width)`` into a Linear's input is left unmapped (one channel taken for
  one feature) as soon as any tensor of the model has another rank;
- a channel shuffle (channels cut into groups by a reshape, the groups transposed) is taken for the identity.

:func:`correct` fixes the first two and the fourth from the recorded shapes, cuts the third and marks the last;
where the shapes cannot decide (two axes of the same length, a part whose length is unknown) torch-pruning's
choice stays, or the operation is marked so that every group through it is protected. What a cut leaves
inconsistent (a branch whose channels come back on another axis) is caught by the post-prune check and recovery
like any other failure.
"""
import math
from dataclasses import dataclass

from torch import nn
from torch_pruning import ops
from torch_pruning.dependency import index_mapping

from msmodelslim.pytorch.prune import graph_faults

_MAX_WALK = 16
_PASS_THROUGH = (ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.RESHAPE)
_TRANSPOSES = ("TransposeBackward0", "TransposeBackward1", "PermuteBackward0")


def _signed(dim):
    """A dimension as autograd saved it (negative ones wrap around 2**64) -> a plain int."""
    dim = int(dim)
    return dim - 2 ** 64 if dim >= 2 ** 63 else dim


def _output_shapes(grad_fn):
    try:
        return [list(meta.shape) for meta in grad_fn._input_metadata]
    except (AttributeError, RuntimeError, TypeError):
        return None


def _input_shapes(grad_fn):
    """The shape of each forward input of ``grad_fn`` (None where the input needs no gradient)."""
    shapes = []
    for fn, output_nr in getattr(grad_fn, "next_functions", ()):
        produced = _output_shapes(fn) if fn is not None else None
        shapes.append(produced[output_nr] if produced and output_nr < len(produced) else None)
    return shapes


def _channels(graph, node, upward):
    """The channel count of the nearest layer above (``upward``) or below ``node``, walking through element-wise
    operations only; None when none is found."""
    for _ in range(_MAX_WALK):
        neighbours = node.inputs if upward else node.outputs
        if not neighbours:
            return None
        node = neighbours[0]
        if node.type in _PASS_THROUGH:
            continue
        return _out_channels(graph, node) if upward else _out_channels(graph, node, inputs=True)
    return None


def _out_channels(graph, node, inputs=False):
    """The output (or, with ``inputs``, input) channel count torch-pruning gives ``node``, or None."""
    try:
        count = graph.get_in_channels(node) if inputs else graph.get_out_channels(node)
    except (AttributeError, TypeError, KeyError, IndexError):
        return None
    return count if isinstance(count, int) and count > 0 else None


def _channel_axis_near(graph, node, shape, upward):
    """The axis of ``shape`` (the tensor at ``node``) that holds the channels of the nearest layer above
    (``upward``) or below, walking through element-wise operations: located by the layer's channel count, or, for
    a concatenation, the axis it joins along. None when it cannot be told."""
    origin = node
    for _ in range(_MAX_WALK):
        neighbours = origin.inputs if upward else origin.outputs
        if not neighbours:
            return None
        origin = neighbours[0]
        if origin.type == ops.OPTYPE.ELEMENTWISE:
            continue
        if origin.type == ops.OPTYPE.CONCAT:
            axis = _concatenated_channels_axis(graph, origin)
            produced = _output_shapes(origin.grad_fn)
            return axis if axis is not None and len(produced[0]) == len(shape) else None
        break
    return _locate(shape, _channels(graph, node, upward))


def _concatenated_channels_axis(graph, node):
    """The axis concatenation ``node`` joins along when it joins channels - the layer below reads all of them, or
    each part is as wide as the channels of the layer above it (not tokens: a class token before the patches) -,
    else None."""
    grad_fn = node.grad_fn
    produced = _output_shapes(grad_fn) if grad_fn is not None else None
    if not produced or not hasattr(grad_fn, "_saved_dim"):
        return None
    axis = _signed(grad_fn._saved_dim) % len(produced[0])
    if axis == 0:
        return None
    if _channels(graph, node, upward=False) == produced[0][axis]:
        return axis
    parts = _input_shapes(grad_fn)
    if not parts or any(part is None or len(part) != len(produced[0]) for part in parts):
        return None
    above = [_channels(graph, part, upward=True) if part.type in _PASS_THROUGH else _out_channels(graph, part)
             for part in node.inputs]
    return axis if sorted(part[axis] for part in parts) == sorted(c for c in above if c is not None) else None


def feeds_a_split(node):
    """Whether the output of ``node`` reaches a split or chunk before any convolution or Linear layer."""
    frontier, seen = list(node.outputs), set()
    while frontier and len(seen) < 4 * _MAX_WALK:
        below = frontier.pop()
        if below in seen:
            continue
        seen.add(below)
        if below.type == ops.OPTYPE.SPLIT:
            return True
        if below.type not in (ops.OPTYPE.CONV, ops.OPTYPE.LINEAR, ops.OPTYPE.MHA):
            frontier.extend(below.outputs)
    return False


def _locate(shape, channels):
    """The one axis (not the batch axis) of ``shape`` that has ``channels`` entries, or None."""
    if shape is None or channels is None:
        return None
    axes = [axis for axis in range(1, len(shape)) if shape[axis] == channels]
    return axes[0] if len(axes) == 1 else None


def _part_numbers(split_node, consumer):
    """Which outputs of the split ``consumer`` reads (the output numbers autograd records)."""
    numbers = set()
    for fn, output_nr in getattr(consumer.grad_fn, "next_functions", ()):
        if fn is split_node.grad_fn:
            numbers.add(output_nr)
    return numbers


class _PartMapping:
    """Channel indices of a whole tensor -> of one part ``[start, end)`` (``to_part``), or back."""

    def __init__(self, start, end, to_part):
        self.start, self.end, self.to_part = start, end, to_part

    @graph_faults.soft_map  # an unknown index (from a map that failed) stays unknown
    def __call__(self, idxs):
        from torch_pruning import _helpers

        if self.to_part:
            return [_helpers._HybridIndex(idx=i.idx - self.start, root_idx=i.root_idx)
                    for i in idxs if self.start <= i.idx < self.end]
        # an index beyond the part cannot be one of its channels; dropping it also ends a cycle of the graph that
        # would otherwise add the offset again and again
        return [_helpers._HybridIndex(idx=i.idx + self.start, root_idx=i.root_idx)
                for i in idxs if 0 <= i.idx < self.end - self.start]


class _ShuffleMapping:
    """Channel indices through a channel shuffle of ``groups`` groups of ``part`` channels: channel
    ``a * part + b`` (group a, place b) comes out at ``b * groups + a`` (``to_shuffled``), or back."""

    def __init__(self, groups, part, to_shuffled):
        self.groups, self.part, self.to_shuffled = groups, part, to_shuffled

    @graph_faults.soft_map
    def __call__(self, idxs):
        from torch_pruning import _helpers

        groups, part = self.groups, self.part
        if self.to_shuffled:
            mapped = [_helpers._HybridIndex(idx=i.idx % part * groups + i.idx // part, root_idx=i.root_idx)
                      for i in idxs]
        else:
            mapped = [_helpers._HybridIndex(idx=i.idx % groups * part + i.idx // groups, root_idx=i.root_idx)
                      for i in idxs]
        # in index order, as every other map leaves them: torch-pruning's graph walk compares index lists in order,
        # and the same channels met again in another order would be walked again (and again)
        return sorted(mapped, key=lambda i: i.idx)


@dataclass(frozen=True)
class EqualParts:
    """``total`` channels cut into equal parts of ``part`` channels that must lose the same places, so the parts
    stay equal (a ``chunk``, the groups of a channel shuffle). ``interleaved``: the indices are in the shuffled
    order (place b of group a at ``b * groups + a``), else part after part."""

    part: int
    total: int
    interleaved: bool = False

    def place(self, idx):
        """The place in its part of channel ``idx``."""
        return idx // (self.total // self.part) if self.interleaved else idx % self.part


class HeadSplit(EqualParts):
    """The channels a reshape cuts into ``part`` heads side by side: all channels of a head are one unit, so heads
    are removed whole (see :mod:`msmodelslim.pytorch.prune.head_splits` for the check that they stay whole)."""

    def signature(self):
        """``(channels, heads, head size)``."""
        return self.total, self.part, self.total // self.part


def _set_mapping(from_node, to_node, slot, mapping):
    for dep in from_node.dependencies:
        if dep.target is to_node:
            dep.index_mapping[slot] = mapping


def _is_channel_axis(dim, rank, located):
    """Whether an operation along ``dim`` acts on the channels: the located channel axes decide; without them,
    torch-pruning's rule (axis 1 or the last axis)."""
    located = [axis for axis in located if axis is not None]
    if located:
        if all(axis == dim for axis in located):
            return True
        if all(axis != dim for axis in located):
            return False
    return dim in (1, rank - 1)


def _correct_split(graph, node, unsafe, chunks, packed):
    grad_fn = node.grad_fn
    parts = _output_shapes(grad_fn)
    source = _input_shapes(grad_fn)
    if not parts or not hasattr(grad_fn, "_saved_dim"):
        return
    rank = len(parts[0])
    dim = _signed(grad_fn._saved_dim) % rank
    whole = source[0] if source else None
    located = _locate(whole, _channels(graph, node, upward=True))
    node.enable_index_mapping = False  # torch-pruning must not overwrite the maps set here
    numbers = {consumer: _part_numbers(node, consumer) for consumer in node.outputs}
    if not _is_channel_axis(dim, rank, [located]) or _splits_attention_projection(grad_fn, packed):
        node.module.split_sizes = None  # channels pass through unchanged
        for consumer in node.outputs:
            _set_mapping(node, consumer, 0, None)
            _set_mapping(consumer, node, 0, None)
        return
    offsets = [0]
    for shape in parts:
        offsets.append(offsets[-1] + shape[dim])
    if any(len(found) != 1 for found in numbers.values()):
        unsafe[node] = "two parts of one split are combined with each other (e.g. a gate: a * b)"
        return
    if grad_fn.name() != "SplitBackward0":
        unsafe[node] = "a split into parts of sizes written in the forward code"
        return
    chunks[node] = EqualParts(offsets[1], offsets[-1])  # equal parts (chunk): the parts must keep equal sizes
    node.outputs.sort(key=lambda consumer: min(numbers[consumer]))
    node.module.split_sizes = [parts[min(numbers[consumer])][dim] for consumer in node.outputs]
    for consumer in node.outputs:
        number = min(numbers[consumer])
        start, end = offsets[number], offsets[number + 1]
        _set_mapping(node, consumer, 0, _PartMapping(start, end, to_part=True))
        _set_mapping(consumer, node, 0, _PartMapping(start, end, to_part=False))


def _splits_attention_projection(grad_fn, packed):
    """Whether ``grad_fn`` splits an ``nn.MultiheadAttention``'s packed projection (``packed``: the ids of those
    tensors, see :func:`_packed_projections`) into query and key-value parts (its forward does so when the query
    is not the key: cross-attention, attention pooling). torch-pruning prunes that module's projections itself, the
    same channels in each part; the parts carry them unchanged."""
    sources = [fn for fn, _ in grad_fn.next_functions if fn is not None]
    if not sources or any(not hasattr(fn, "variable") for fn in sources):
        return False
    return all(id(fn.variable) in packed for fn in sources)


def _packed_projections(model):
    return {id(t) for m in model.modules() if isinstance(m, nn.MultiheadAttention)
            for t in (m.in_proj_weight, m.in_proj_bias) if t is not None}


def _correct_concat(graph, node, unsafe):
    grad_fn = node.grad_fn
    produced = _output_shapes(grad_fn)
    if not produced or not hasattr(grad_fn, "_saved_dim"):
        return
    rank = len(produced[0])
    dim = _signed(grad_fn._saved_dim) % rank
    shapes = _input_shapes(grad_fn)
    sizes = [shape[dim] if shape is not None else None for shape in shapes]
    if sizes.count(None) == 1:
        sizes[sizes.index(None)] = produced[0][dim] - sum(s for s in sizes if s is not None)
    positions = {}
    for position, (fn, _) in enumerate(grad_fn.next_functions):
        for producer in node.inputs:
            if fn is not None and fn is producer.grad_fn:
                positions.setdefault(producer, []).append(position)
    located = [_locate(shapes[pos[0]], _channels(graph, producer, upward=True)) if producer.type in _PASS_THROUGH
               else _locate(shapes[pos[0]], _out_channels(graph, producer))
               for producer, pos in positions.items()]
    node.enable_index_mapping = False
    if not _is_channel_axis(dim, rank, located):
        for producer in node.inputs:
            _set_mapping(node, producer, 1, None)
            _set_mapping(producer, node, 1, None)
        return
    if None in sizes or any(len(pos) != 1 for pos in positions.values()) or len(positions) != len(node.inputs):
        unsafe[node] = "a concatenation whose parts cannot all be located"
        return
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    node.module.concat_sizes = [sizes[positions[producer][0]] for producer in node.inputs]
    for producer in node.inputs:
        position = positions[producer][0]
        start, end = offsets[position], offsets[position + 1]
        _set_mapping(node, producer, 1, _PartMapping(start, end, to_part=True))
        _set_mapping(producer, node, 1, _PartMapping(start, end, to_part=False))


def _permutation(grad_fn, rank):
    name = grad_fn.name()
    if name == "PermuteBackward0":
        return [_signed(d) % rank for d in grad_fn._saved_dims]
    first, second = _signed(grad_fn._saved_dim0) % rank, _signed(grad_fn._saved_dim1) % rank
    order = list(range(rank))
    order[first], order[second] = order[second], order[first]
    return order


def _moves_channels(graph, node):
    """Whether a transpose/permute ``node`` puts the channels of the layer above on another axis than the one
    the layer below reads (decided only when both axes can be located by their lengths)."""
    grad_fn = node.grad_fn
    if grad_fn is None or grad_fn.name() not in _TRANSPOSES:
        return False
    produced, source = _output_shapes(grad_fn), _input_shapes(grad_fn)
    if not produced or not source or source[0] is None:
        return False
    try:
        order = _permutation(grad_fn, len(source[0]))
    except (AttributeError, TypeError, ValueError):
        return False
    axis_in = _channel_axis_near(graph, node, source[0], upward=True)
    axis_out = _channel_axis_near(graph, node, produced[0], upward=False)
    if axis_in is None or axis_out is None:
        return False
    return order[axis_out] != axis_in


SHUFFLE = "a channel shuffle whose channel order cannot be followed"


def _past_elementwise(node, upward):
    """The first node from ``node`` on (itself included) that is not an element-wise operation with a single
    neighbour that way (transposes count as operations), walking up or down; None past :data:`_MAX_WALK` steps
    (the graph has cycles where a module is called twice)."""
    for _ in range(_MAX_WALK):
        neighbours = node.inputs if upward else node.outputs
        if node.type != ops.OPTYPE.ELEMENTWISE or len(neighbours) != 1 or node.grad_fn is None \
                or node.grad_fn.name() in _TRANSPOSES:
            return node
        node = neighbours[0]
    return None


REORDERED = "an operation that reorders or slices the channels at positions written in the forward code"
HEADS = "a reshape that cuts the channels into heads or groups, which pruning would mix"
_REORDERS = ("FlipBackward0", "RollBackward0")


def _channel_axis(graph, node, shape):
    """The axes of ``shape`` (the input of ``node``) that may hold the channels of the layer or concatenation just
    above: those of that length (several when other axes have it too); none when the length is unknown."""
    channels = {_channels(graph, node, upward=True), _concatenated(node)} - {None}
    return [axis for axis in range(1, len(shape)) if shape[axis] in channels]


def _reorders_channels(graph, node):
    """Whether ``node`` flips, rolls or slices (at fixed positions) an axis that may hold channels."""
    grad_fn = node.grad_fn
    name = grad_fn.name() if grad_fn is not None else ""
    if name not in _REORDERS and name != "SliceBackward0":
        return False
    source = _input_shapes(grad_fn)
    if not source or source[0] is None:
        return False
    shape = source[0]
    if name == "SliceBackward0":
        dim = _signed(grad_fn._saved_dim) % len(shape)
        start, end, step = (_signed(grad_fn._saved_start), _signed(grad_fn._saved_end), grad_fn._saved_step)
        if start == 0 and end >= shape[dim] and step == 1:
            return False  # the whole axis
        dims = [dim]
    else:
        dims = [_signed(d) % len(shape) for d in grad_fn._saved_dims]
    return any(dim in _channel_axis(graph, node, shape) for dim in dims)


def _split_into_heads(graph, node):
    """Whether reshape ``node`` cuts the channel axis (the one axis of the channels' length) into several axes of
    more than one entry (``view(b, t, heads, -1)``, ``view(n, groups, c // groups, h, w)``)."""
    produced, source = _output_shapes(node.grad_fn), _input_shapes(node.grad_fn)
    if not produced or not source or source[0] is None:
        return False
    before, after = source[0], produced[0]
    extra = len(after) - len(before)
    if extra < 1:
        return False
    axes = _channel_axis(graph, node, before)
    if len(axes) != 1:
        return False  # the channels cannot be told from an axis of the same length (tokens of a tiny image)
    return any(before[:k] == after[:k] and before[k + 1:] == after[k + 1 + extra:]
               and math.prod(after[k:k + 1 + extra]) == before[k] and sum(n > 1 for n in after[k:k + 1 + extra]) > 1
               for k in axes)


def head_split(graph, node):
    """``(channels, heads, head size)`` when reshape ``node`` cuts the channel axis into two axes of more than one
    entry, heads then head size, and keeps every other axis (``view(b, t, heads, -1)``), else None.
    Whole heads can be removed from such a split: every head keeps its size, so what each head computes stays."""
    if not _split_into_heads(graph, node):
        return None
    before, after = _input_shapes(node.grad_fn)[0], _output_shapes(node.grad_fn)[0]
    if len(after) != len(before) + 1:
        return None
    for k in _channel_axis(graph, node, before):
        if before[:k] == after[:k] and before[k + 1:] == after[k + 2:] and after[k] > 1 and after[k + 1] > 1:
            return before[k], after[k], after[k + 1]
    return None


def _split_axis(before, after):
    """The axis of shape ``before`` that a reshape to ``after`` cuts in two (every other axis kept), or None."""
    if len(after) != len(before) + 1:
        return None
    return next((k for k in range(1, len(before)) if before[:k] == after[:k] and before[k + 1:] == after[k + 2:]
                 and after[k] * after[k + 1] == before[k]), None)


def _shuffle(graph, node):
    """``(groups, part, order, axis, certain)`` when transpose/permute ``node`` reorders the two axes that the
    reshape just above cut the channels of the layer above into (``view(n, groups, c // groups, h, w)
    .transpose(1, 2)``: the channels come back interleaved, an order torch-pruning's maps do not follow), else
    None. ``certain``: the cut axis is known to be the channel axis - it has the length of the layer above, alone
    or by the (batch, channels, height, width) convention where other axes have the same length, or it is axis 1
    of a concatenation along axis 1; a shuffle of an axis not known to be the channels protects its groups."""
    grad_fn = node.grad_fn
    if grad_fn is None or grad_fn.name() not in _TRANSPOSES or len(node.inputs) != 1:
        return None
    reshape = _past_elementwise(node.inputs[0], upward=True)
    if reshape is None or reshape.type != ops.OPTYPE.RESHAPE or reshape.grad_fn is None:
        return None
    source, before = _input_shapes(grad_fn), _input_shapes(reshape.grad_fn)
    if not source or source[0] is None or not before or before[0] is None:
        return None
    shape = source[0]
    axis = _split_axis(before[0], shape)
    if axis is None or 1 in (shape[axis], shape[axis + 1]):
        return None
    try:
        order = _permutation(grad_fn, len(shape))
    except (AttributeError, TypeError, ValueError):
        return None
    # the inner axis now comes first (attention's (heads, head size) split, moved apart by a transpose of the
    # tokens, keeps its order, and its channels)
    if order.index(axis + 1) > order.index(axis):
        return None
    channels = _channels(graph, node, upward=True)
    by_layer = before[0][axis] == channels and (_locate(before[0], channels) == axis or len(before[0]) == 4)
    by_concatenation = axis == 1 and before[0][axis] == _concatenated(reshape)
    return shape[axis], shape[axis + 1], order, axis, by_layer or by_concatenation


def _native_shuffle(graph, node, chunks):
    """Map ``torch.nn.ChannelShuffle`` / ``F.channel_shuffle`` (one operation on axis 1) like the reshape-transpose
    shuffle; returns None when ``node`` is not one, else whether it could (axis 1 known to hold channels)."""
    grad_fn = node.grad_fn
    if grad_fn is None or grad_fn.name() != "ChannelShuffleBackward0" or len(node.inputs) != 1:
        return None
    source = _input_shapes(grad_fn)
    groups = int(grad_fn._saved_groups)
    if not source or source[0] is None or 1 not in _channel_axis(graph, node, source[0]) \
            or groups < 2 or source[0][1] % groups:
        return False
    part = source[0][1] // groups
    _set_mapping(node.inputs[0], node, 0, _ShuffleMapping(groups, part, to_shuffled=True))
    _set_mapping(node, node.inputs[0], 0, _ShuffleMapping(groups, part, to_shuffled=False))
    chunks[node] = EqualParts(part, groups * part, interleaved=True)
    return True


def _map_shuffle(node, shuffle, chunks):
    """Map the channels through shuffle ``node`` (see :func:`_shuffle`) when it swaps the two axes and a reshape
    below merges them back into the channel axis (ShuffleNet's): every group must then lose the same places, so
    that the shuffle of the pruned channels pairs them as before. Returns whether it did."""
    groups, part, order, axis, certain = shuffle
    if not certain:
        return False
    swapped = list(range(len(order)))
    swapped[axis], swapped[axis + 1] = axis + 1, axis
    merge = _past_elementwise(node.outputs[0], upward=False) if len(node.outputs) == 1 else None
    produced = _output_shapes(merge.grad_fn) if merge is not None and merge.grad_fn is not None else None
    if order != swapped or merge is None or merge.type != ops.OPTYPE.RESHAPE or not produced \
            or len(produced[0]) != len(order) - 1 or produced[0][axis] != groups * part:
        return False
    source = node.inputs[0]
    _set_mapping(source, node, 0, _ShuffleMapping(groups, part, to_shuffled=True))
    _set_mapping(node, source, 0, _ShuffleMapping(groups, part, to_shuffled=False))
    chunks[node] = EqualParts(part, groups * part, interleaved=True)
    return True


def _cut(node):
    """Remove every dependency into and out of ``node``: no channel index crosses it."""
    for neighbour in list(node.inputs) + list(node.outputs):
        neighbour.dependencies = [dep for dep in neighbour.dependencies if dep.target is not node]
    node.dependencies = []


def _concatenated(node):
    """The size of axis 1 of the concatenation just above ``node`` (through element-wise operations), or None."""
    origin = _past_elementwise(node.inputs[0], upward=True) if len(node.inputs) == 1 else None
    if origin is None or origin.type != ops.OPTYPE.CONCAT or origin.grad_fn is None:
        return None
    parts = _input_shapes(origin.grad_fn)
    shapes = [shape for shape in parts if shape is not None] if parts else []
    if len(shapes) != len(parts or ()) or len({len(shape) for shape in shapes}) != 1 or len(shapes[0]) < 3:
        return None
    if any(shape[:1] + shape[2:] != shapes[0][:1] + shapes[0][2:] for shape in shapes):
        return None  # parts that differ on another axis than 1: not a concatenation along axis 1
    return sum(shape[1] for shape in shapes)


def _correct_flatten(graph, node):
    """Map a flatten of ``(batch, channels, *spatial)`` into ``(batch, channels x spatial)``: channel c becomes
    features c*stride .. (c+1)*stride - 1, as torch-pruning maps the flattens it handles. Where torch-pruning left
    it unmapped (it maps flattens only in models whose tensors are all 2-D or 4-D, so one token sequence elsewhere
    in the model costs every flatten its map), the map is added; where it mapped it with another stride (it infers
    the stride from the next layer's width, which a sum or a chunk after the flatten misleads), the stride is
    set to the one the shapes give."""
    produced, source = _output_shapes(node.grad_fn), _input_shapes(node.grad_fn)
    if not produced or not source or source[0] is None:
        return
    shape_in, shape_out = source[0], produced[0]
    if len(shape_in) < 3 or len(shape_out) != 2 or shape_out[1] != math.prod(shape_in[1:]):
        return
    stride = math.prod(shape_in[2:])
    if shape_in[1] not in (_channels(graph, node, upward=True), _concatenated(node)):
        return  # axis 1 is not known to hold channels (attention's (tokens, batch, heads, head size), say)
    neighbours = list(node.inputs) + list(node.outputs)
    deps = [dep for dep in node.dependencies if dep.target in neighbours]
    deps += [dep for n in neighbours for dep in n.dependencies if dep.target is node]
    maps = [(dep, slot, m) for dep in deps for slot, m in enumerate(dep.index_mapping)
            if isinstance(m, index_mapping._FlattenIndexMapping)]
    # right: the maps on the producer's side, dividing toward it and multiplying from it, with this stride
    right = all(m._stride == stride and m.reverse == (dep.target is not node) and
                (dep.target in node.inputs or dep.target is node and dep.source in node.inputs) for dep, _, m in maps)
    if right and (maps or stride == 1):
        return  # torch-pruning mapped it right, or there is nothing to map
    for dep, slot, _ in maps:
        dep.index_mapping[slot] = None
    for producer in node.inputs:
        _set_mapping(node, producer, 0, index_mapping._FlattenIndexMapping(stride=stride, reverse=True))
        _set_mapping(producer, node, 0, index_mapping._FlattenIndexMapping(stride=stride, reverse=False))
    node.enable_index_mapping = False  # torch-pruning must not map it again with its own stride


def correct(graph):
    """Correct the index maps of a built ``torch_pruning.DependencyGraph`` in place (see the module docstring).

    Returns ``(unsafe, chunks)``: ``{node: reason}`` for the operations whose groups must be protected, and
    ``{node: (part size, whole size)}`` for the channel splits into equal parts (``chunk``), whose parts must
    lose the same channels (see :func:`chunk_units`)."""
    unsafe, chunks, shuffled = {}, {}, set()
    packed = _packed_projections(graph.model)
    for node in list(graph.module2node.values()):
        if node.type == ops.OPTYPE.SPLIT:
            _correct_split(graph, node, unsafe, chunks, packed)
        elif node.type == ops.OPTYPE.CONCAT:
            _correct_concat(graph, node, unsafe)
        elif node.type == ops.OPTYPE.RESHAPE:
            _correct_flatten(graph, node)
    for node in list(graph.module2node.values()):
        if node.type not in (ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.SLICE):
            continue
        shuffle, native = _shuffle(graph, node), _native_shuffle(graph, node, chunks)
        if shuffle is not None:
            if _map_shuffle(node, shuffle, chunks):
                shuffled.add(_past_elementwise(node.inputs[0], upward=True))  # its reshape cuts no heads
            else:
                unsafe[node] = SHUFFLE
        elif native is not None:
            if not native:
                unsafe[node] = SHUFFLE
        elif _reorders_channels(graph, node):
            unsafe[node] = REORDERED
        elif node.type == ops.OPTYPE.ELEMENTWISE and _moves_channels(graph, node):
            _cut(node)
    for node in list(graph.module2node.values()):
        if node.type != ops.OPTYPE.RESHAPE or node in shuffled or not _split_into_heads(graph, node):
            continue
        split = head_split(graph, node)
        if split is None:
            unsafe[node] = HEADS
        else:  # all channels of a head are one unit: heads are removed whole
            channels, heads, _ = split
            chunks[node] = HeadSplit(heads, channels, interleaved=True)
    return unsafe, chunks


class Partition:
    """Keys joined into classes (union-find); :meth:`find` names a key's class by one of its members."""

    def __init__(self):
        self.parent = {}

    def find(self, key):
        while self.parent.setdefault(key, key) != key:
            key = self.parent[key]
        return key

    def join(self, a, b):
        self.parent[self.find(a)] = self.find(b)


PARTIAL_CHUNK = "a chunk cuts the channels into equal parts and the group holds only some of them"


def chunk_units(items, chunks):
    """Units of a torch-pruning group that must go together because a ``chunk`` cuts their channels into equal
    parts: channel ``i`` of every part is one unit (as heads are). ``items`` are the group's items.

    Returns ``(unit_of_root, partial)``: a dict (empty when no chunk is reached wholly), and ``{chunk node:
    [(channel, root)]}`` for the chunks the group reaches with only some of their channels (e.g. one of two layers
    concatenated and then chunked: its parts could not stay equal alone; another group may hold the rest).
    """
    units, partial = Partition(), {}
    for item in items:
        node = item.dep.target
        if node not in chunks or (item.dep.source is node and not isinstance(node.module, nn.MultiheadAttention)):
            continue  # (an attention module's heads are its own: the group reaches them through itself)
        if any(r is None for r in item.root_idxs):
            continue  # channels the graph cannot trace to a layer: their group is protected for that already
        parts = chunks[node]
        pairs = list(zip((int(i) for i in item.idxs), (int(r) for r in item.root_idxs)))
        if {idx for idx, _ in pairs} != set(range(parts.total)):
            partial.setdefault(node, set()).update(pairs)
            continue
        first_root = {}
        for idx, root in pairs:
            units.join(root, first_root.setdefault(parts.place(idx), root))
    return ({root: units.find(root) for root in units.parent},
            {node: sorted(pairs) for node, pairs in partial.items()})
