"""The original msModelSlim intra-block steps, bit for bit: keep the *first* rows/columns of every tensor whose
shape differs from the small model's (``prune_bert_intra_block``), and the first part of each third of fused
q/k/v tensors (``prune_vit_intra_block``). Framework-free: works on :class:`~.entries.Entry` and shapes."""


def differing_axes(big, small):
    """The axes along which shapes ``big`` and ``small`` (of equal rank) differ."""
    return [axis for axis, (b, s) in enumerate(zip(big, small)) if b != s]


def leading_slice(entry, big_shape, small_shape):
    """``w[:n]`` / ``w[:r, :c]`` of the original ``prune_bert_intra_block``: ``entry`` with the leading
    selections that make ``big_shape`` fit ``small_shape`` (a larger small axis keeps the whole axis).

    Raises:
        NotImplementedError: a tensor of more than 2 dimensions (as the original).
    """
    if len(big_shape) > 2:
        raise NotImplementedError("Other dimension is not implemented")
    for axis in differing_axes(big_shape, small_shape):
        entry = entry.select(axis, range(min(big_shape[axis], small_shape[axis])))
    return entry


def fused_thirds(entry, key, big_shape, small_shape):
    """Keep ``new/3`` entries from each third of the fused axis, ``[int(i*old/3), int(i*old/3 + new/3))``.

    Raises:
        ValueError: both axes differ, or the small model is larger along the fused axis.
    """
    axes = differing_axes(big_shape, small_shape)
    if len(axes) != 1:
        raise ValueError(f"Fused qkv tensor '{key}' differs along {len(axes)} axes {big_shape} -> {small_shape}; "
                         f"prune_vit_intra_block can shrink one axis only.")
    axis = axes[0]
    old, new = big_shape[axis], small_shape[axis]
    if new > old:
        raise ValueError(f"Fused qkv tensor '{key}' is larger in the model ({new}) than in the checkpoint ({old}).")
    index = [j for i in range(3) for j in range(int(i * old / 3), int(i * old / 3 + new / 3))]
    return entry.select(axis, index)
