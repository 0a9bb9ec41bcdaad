"""Slicing one mismatched checkpoint tensor once the kept units are chosen (both backends)."""
from msmodelslim.common.prune.transformer_prune import leading
from msmodelslim.utils.logging import logger


def slice_mismatched(entry, key, big, small, owner, fused_keys, current_shape):
    """``entry`` with a selection along every axis where ``big`` and ``small`` differ.

    ``owner(axis)`` gives the :class:`~msmodelslim.common.structure.layout.Owner` of the axis, or None: an owned
    axis takes the group's kept indices; an axis of a fused qkv key (one of ``fused_keys`` in its name) takes the original's thirds rule
    (``current_shape()`` is the entry's shape so far); any other axis keeps its first rows/columns, with a WARNING.

    Raises:
        ValueError: from :func:`leading.fused_thirds` (a fused tensor that differs along two axes).
    """
    for axis in leading.differing_axes(big, small):
        found = owner(axis)
        if found is not None:
            entry = entry.select(axis, found.group.index(found.view))
        elif fused_keys and any(q in key for q in fused_keys):
            entry = leading.fused_thirds(entry, key, current_shape(entry), small)
        else:
            logger.warning("'%s' axis %d (%d -> %d) follows no structure rule: keeping its first %d.",
                           key, axis, big[axis], small[axis], small[axis])
            entry = entry.select(axis, range(min(big[axis], small[axis])))
    return entry
