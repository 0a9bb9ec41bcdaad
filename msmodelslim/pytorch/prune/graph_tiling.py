"""Channel maps through reshapes that fold token positions into the channel axis (space-to-depth, "pixel shuffle").

A vision-language projector often merges each 2 x 2 block of image tokens into one token of four times the width:
``x.view(b, h, w // 2, c * 2)`` and again along the other side. The channel axis is the last one and stays the
innermost, so channel ``c`` of the input comes out at ``c``, ``L + c``, ``2L + c``, ... (``L`` the input's last
length) - one copy per folded position. torch-pruning maps reshapes only between 2-D and 4-D tensors, as a flatten
of ``(batch, channels, height, width)`` (channel ``c`` at ``c * stride`` .. ``(c + 1) * stride - 1``), and leaves
this one as the identity: pruning the channels before it would cut the wrong inputs of the layer after it.

:func:`correct` maps every reshape whose input's last axis provably holds the channels of a layer (a Linear, a norm,
an embedding with channels last; a convolution's or batch norm's axis 1 moved last by a permute; through
element-wise operations, transposes, and reshapes of the other axes or folds already mapped) and whose output's
last axis is a whole multiple of it. The same map is right for a channels-last flatten of convolution features
(``x.permute(0, 2, 3, 1).flatten(1)`` into a Linear: channel ``c`` at ``j * C + c``), which torch-pruning maps as
the channels-first flatten ``c * h * w + j``.
"""
from torch import nn
from torch_pruning import ops

from msmodelslim.pytorch.prune import graph_faults
from msmodelslim.pytorch.prune.graph_axes import (
    _MAX_WALK, _TRANSPOSES, _input_shapes, _output_shapes, _permutation, _set_mapping)

_CHANNELS_LAST = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.RMSNorm)
_CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


class TiledMapping:
    """Channel indices of a last axis of ``length`` entries -> their ``copies`` places after a fold (``to_tiled``:
    ``c`` -> ``c``, ``length + c``, ...), or back (a place -> ``place % length``)."""

    def __init__(self, length, copies, to_tiled):
        self.length, self.copies, self.to_tiled = length, copies, to_tiled

    @graph_faults.soft_map
    def __call__(self, idxs):
        from torch_pruning import _helpers

        if self.to_tiled:
            mapped = [_helpers._HybridIndex(idx=copy * self.length + i.idx, root_idx=i.root_idx)
                      for i in idxs if 0 <= i.idx < self.length for copy in range(self.copies)]
        else:
            mapped = list({(i.idx % self.length, i.root_idx): _helpers._HybridIndex(
                idx=i.idx % self.length, root_idx=i.root_idx) for i in idxs}.values())
        return sorted(mapped, key=lambda i: i.idx)  # torch-pruning's walk compares index lists in order


def correct(graph):
    """Set :class:`TiledMapping` on every fold of token positions into the channel axis of ``graph`` (a built
    ``torch_pruning.DependencyGraph``); returns the reshape nodes it mapped."""
    candidates = []
    for node in graph.module2node.values():
        if node.type != ops.OPTYPE.RESHAPE or len(node.inputs) != 1 or node.grad_fn is None:
            continue
        before, after = _shapes(node)
        if before is not None and len(before) >= 2 and after and after[-1] > before[-1] \
                and after[-1] % before[-1] == 0:
            candidates.append((node, before[-1], after[-1] // before[-1]))
    folds, found = {}, True
    while found:  # a fold may stand on another (h, then w): repeat until none is added
        found = False
        for node, length, copies in candidates:
            if node not in folds and _last_axis_holds_channels(node.inputs[0], length, folds):
                folds[node], found = copies, True
                node.enable_index_mapping = False  # torch-pruning must not map it again as a flatten
                _set_mapping(node.inputs[0], node, 0, TiledMapping(length, copies, to_tiled=True))
                _set_mapping(node, node.inputs[0], 0, TiledMapping(length, copies, to_tiled=False))
    return folds


def _shapes(node):
    produced, source = _output_shapes(node.grad_fn), _input_shapes(node.grad_fn)
    if not produced or not source or source[0] is None:
        return None, None
    return source[0], produced[0]


def _last_axis_holds_channels(node, length, folds):
    """Whether the tensor ``node`` produces has, on its last axis of ``length`` entries, the channels of a layer -
    directly (a layer with channels last), through a permute that moved them there (a convolution's channels, axis
    1, made last by ``permute(0, 2, 3, 1)``), or through operations that keep that axis (see the module
    docstring)."""
    axis = -1  # where the channels are in the tensor ``node`` produces (from the end: broadcasting aligns there)
    for _ in range(_MAX_WALK):
        produced = _output_shapes(node.grad_fn) if node.grad_fn is not None else None
        if not produced or len(produced[0]) < -axis or produced[0][axis] != length:
            return False
        rank = len(produced[0])
        if node.type not in (ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.RESHAPE):
            channels_at = rank - 1 if isinstance(node.module, _CHANNELS_LAST) else \
                1 if isinstance(node.module, _CHANNELS_FIRST) else None
            return channels_at is not None and axis % rank == channels_at
        if node.type == ops.OPTYPE.RESHAPE:
            before, _ = _shapes(node)
            if before is None or len(node.inputs) != 1 or axis % rank != rank - 1:
                return False
            if node in folds:
                length = before[-1]
            elif before[-1] != length:
                return False  # the last axis is cut or merged in another way
            axis = -1
        elif node.grad_fn.name() in _TRANSPOSES:
            try:
                if len(node.inputs) != 1:
                    return False
                axis = _permutation(node.grad_fn, rank)[axis % rank] - rank
            except (AttributeError, TypeError, ValueError, IndexError):
                return False
        elif not node.inputs or not _keeps_axis(node, axis % rank, rank, length):
            return False
        node = node.inputs[0]  # the inputs of an element-wise operation carry the same channels
    return False


def _keeps_axis(node, axis, rank, length):
    """An element-wise operation (a residual sum, an activation, a scale) with an output of ``rank`` dimensions
    whose inputs all have ``length`` entries on ``axis`` (or broadcast along it)."""
    shapes = [shape for shape in _input_shapes(node.grad_fn) if shape is not None]
    aligned = [shape[axis - rank] if len(shape) >= rank - axis else 1 for shape in shapes]
    return bool(shapes) and all(n in (length, 1) for n in aligned) and length in aligned
