"""torch-pruning's channel index maps, made to fail soft while a dependency graph is built.

Some of torch-pruning's index maps raise on shapes it did not plan for (a concatenation part whose channel count it
cannot infer, a grouped-query repeat of zero, a split whose offsets it never recorded), and the whole graph is lost
with them: the model is refused though only one operation is in doubt. While :func:`failing_soft` is active:

- a map that raises passes on one unknown index (position and root ``None``; torch-pruning's own grouped-query map
  also gives unknown roots), so every group it reaches is protected
  (:func:`msmodelslim.pytorch.prune.graph._member_of_item`);
- an index-map update that raises is recorded against its operation, and every group through that operation is
  protected like one through an operation :mod:`graph_axes` marks unsafe.

:func:`order_free_walk` is the other patch of the graph build: the walk compares the index lists it meets as sets,
so that a map that permutes channels (a shuffle's) does not send it round the same channels in every order.
"""
import contextlib
import functools

from torch_pruning import _helpers
from torch_pruning.dependency import index_mapping

UNMAPPED = "an operation whose channel map torch-pruning could not build"
# what a failed map passes on: one index, neither position nor root known; every map it reaches fails on it and
# passes it on unchanged, so the graph walk meets it again and stops (as with any index set it has seen)
UNKNOWN = _helpers._HybridIndex(idx=None, root_idx=None)


def soft_map(call):
    """``call`` (an index map's ``__call__``) that gives ``[UNKNOWN]`` instead of raising."""
    @functools.wraps(call)
    def mapped(self, idxs):
        try:
            return call(self, idxs)
        except Exception:  # noqa: BLE001 - any fault of the map: the group it reaches is protected
            return [UNKNOWN]

    return mapped


def _soft_update(update, failed):
    @functools.wraps(update)
    def updated(graph, node):
        if not getattr(node, "enable_index_mapping", True):
            return None  # maps set by graph_axes/graph_tiling, which torch-pruning's update (run again for every
            # group) would overwrite: its reshape update does not read this flag
        try:
            return update(graph, node)
        except Exception:  # noqa: BLE001 - any fault of the update: the operation is marked, its groups protected
            failed[node] = UNMAPPED
            return None

    return updated


@contextlib.contextmanager
def failing_soft(failed):
    """Within the block, torch-pruning's index maps and index-map updates do not raise; ``failed`` (a dict) gets
    ``{operation node: reason}`` for each update that would have; an operation marked ``enable_index_mapping =
    False`` keeps the maps set on it. The library is restored on exit.

    Not thread-safe: the maps are patched for the whole process while the block runs.
    """
    saved = []
    for name in dir(index_mapping):
        value = getattr(index_mapping, name)
        if isinstance(value, type) and name.endswith("IndexMapping") and "__call__" in vars(value):
            saved.append((value, "__call__", value.__call__))
            value.__call__ = soft_map(value.__call__)
        elif name.startswith("update_") and name.endswith("_index_mapping") and name != "update_index_mapping":
            saved.append((index_mapping, name, value))
            setattr(index_mapping, name, _soft_update(value, failed))
    try:
        yield failed
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def _has_pruning_op_in_any_order(self, dep, idxs):
    """torch-pruning's ``Group.has_pruning_op`` with index lists compared as sets: the walk stops at channels it
    has met, in whatever order a map (a channel shuffle's) lists them."""
    wanted = None
    for seen_dep, seen in self._group:
        if seen_dep.target == dep.target and seen_dep.handler == dep.handler and len(seen) == len(idxs):
            wanted = set(idxs) if wanted is None else wanted
            if set(seen) == wanted:
                return True
    return False


def _add_and_merge_keeping_roots(self, dep, idxs):
    """torch-pruning's ``Group.add_and_merge`` keeping every (channel, root) pair: it keeps one root per channel,
    so a channel the walk reaches from several roots (a flatten's features summed with a layer's outputs, reached
    again through a chunk) would look as if only one of them removed it."""
    from torch_pruning import _helpers

    for i, (seen_dep, seen) in enumerate(self._group):
        if seen_dep.target == dep.target and seen_dep.handler == dep.handler:
            pairs, merged = set(), []
            for index in list(seen) + list(idxs):
                if (index.idx, index.root_idx) not in pairs:
                    merged.append(index)
                    pairs.add((index.idx, index.root_idx))
            self._group[i] = _helpers.GroupItem(dep=seen_dep, idxs=merged)
            return
    self.add_dep(dep, idxs)


@contextlib.contextmanager
def order_free_walk():
    """Within the block, torch-pruning's graph walk takes an index list met again in another order as met (a
    permutation in the graph would otherwise send it round the same channels in every order they can come in),
    and a channel reached from several roots keeps all of them."""
    from torch_pruning.dependency.group import Group

    saved = Group.has_pruning_op, Group.add_and_merge
    Group.has_pruning_op, Group.add_and_merge = _has_pruning_op_in_any_order, _add_and_merge_keeping_roots
    try:
        yield
    finally:
        Group.has_pruning_op, Group.add_and_merge = saved
