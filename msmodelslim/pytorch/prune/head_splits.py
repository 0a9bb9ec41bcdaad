"""Whether a pruned model still cuts its channels into heads of the old head size.

Where a reshape cuts a layer's channels into ``(heads, head size)``, the dependency graph removes whole heads. The
code of the reshape decides whether the fewer channels are then cut right: ``view(b, t, -1, head_dim)`` keeps the
head size, but ``view(b, t, num_heads, -1)`` with the old head count cuts them into as many, smaller heads - the
model runs, each head reading parts of two. So the reshapes a forward pass makes are recorded (a
``TorchFunctionMode``) on the model before and after pruning, and every reshape that cut channels into heads must
cut the pruned channels into heads of the same size.
"""
import torch
from torch.overrides import TorchFunctionMode

_RESHAPES = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.unflatten, torch.unflatten,
             torch.Tensor.flatten, torch.flatten}


class _Recorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func in _RESHAPES and args and isinstance(args[0], torch.Tensor) and isinstance(result, torch.Tensor):
            self.calls.append((tuple(args[0].shape), tuple(result.shape)))
        return result


def record_reshapes(run):
    """``(result of run(), [(input shape, output shape)])``: every reshape, view and unflatten ``run()`` makes, in
    order."""
    with _Recorder() as recorder:
        result = run()
    return result, recorder.calls


def _split_axis(before, after, split):
    """The axis of ``before`` that this reshape cuts into ``split``'s ``(heads, head size)``, or None."""
    channels, heads, size = split
    if len(after) != len(before) + 1:
        return None
    return next((k for k in range(len(before)) if before[k] == channels and after[k:k + 2] == (heads, size)
                 and before[:k] == after[:k] and before[k + 1:] == after[k + 2:]), None)


def _merge_axis(before, after, split):
    """The axis of ``after`` into which this reshape merges two axes of ``before`` that are ``split``'s heads and
    head size, in either order, or None."""
    channels, heads, size = split
    if len(before) != len(after) + 1:
        return None
    return next((k for k in range(len(after)) if after[k] == channels
                 and sorted(before[k:k + 2]) == sorted((heads, size))
                 and before[:k] == after[:k] and before[k + 2:] == after[k + 1:]), None)


def check_head_splits(dense, pruned, splits):
    """Raise ``ValueError`` when the reshapes ``pruned`` (from :func:`record_reshapes` on the pruned model) cut
    channels into heads of another size than the same reshapes of the dense model (``dense``) did, or merge the
    heads back into channels head size first (channel ``p * heads + h``: whole heads removed, the next layer
    would lose the wrong inputs), for each ``(channels, heads, head size)`` of ``splits``."""
    if len(dense) != len(pruned):
        raise ValueError(f"the pruned model makes {len(pruned)} reshapes where the dense one made {len(dense)}")
    for (before, after), (now_before, now_after) in zip(dense, pruned):
        if (before, after) == (now_before, now_after):
            continue
        for split in splits:
            _check_split(split, _split_axis(before, after, split), now_before, now_after)
            _check_merge(split, _merge_axis(before, after, split), before, now_before, now_after)


def _check_split(split, k, now_before, now_after):
    if k is None:
        return
    size, width = split[2], now_before[k]
    if width % size or now_after != (*now_before[:k], width // size, size, *now_before[k + 1:]):
        raise ValueError(
            f"a reshape cut {split[0]} channels into {split[1]} heads of {size}; pruned, it cuts {width} into "
            f"{now_after[k:k + 2]}, so the heads would mix (forward() fixes the number of heads: pass the head size "
            f"and -1 heads to view/reshape, or protect the attention with un_prune_list)")


def _check_merge(split, k, before, now_before, now_after):
    if k is None:
        return
    _, heads, size = split
    head_major = tuple(before[k:k + 2]) == (heads, size) if heads != size else now_before[k + 1] == size
    if not head_major or now_before[k:k + 2] != (now_after[k] // size, size):
        raise ValueError(
            f"a reshape merges {heads} heads of {size} back into {split[0]} channels head size first, so the next "
            f"layer's inputs are not whole heads (pruned, it merges {now_before[k:k + 2]}): removing heads would "
            f"pair it with the wrong inputs (merge heads first, e.g. y.transpose(1, 2).reshape(b, t, -1), or protect "
            f"the attention with un_prune_list)")


def head_count_patches(model, groups, removed):
    """``{module name: {attribute: heads kept}}`` for each group of ``groups`` that loses whole heads
    (``removed[g]``, units of one reshape into heads): the integer attributes named like a head count
    (``num_heads``, ``n_head``, ``heads``) that equal the old number of heads, on the module holding all of the
    group's layers (its attention). A forward() that passes them to view/reshape then cuts the fewer channels into
    heads of the old size; :func:`check_head_splits` finds out whether it does."""
    patches = {}
    for g, units in removed.items():
        group = groups[g]
        if not units or len(group.head_splits) != 1 or group.size != group.head_splits[0][1]:
            continue
        heads = group.head_splits[0][1]
        owner = _common_parent([m.target for m in group.members])
        for attr, value in vars(model.get_submodule(owner)).items():
            if _names_a_head_count(attr) and type(value) is int and value == heads:
                patches.setdefault(owner, {})[attr] = heads - len(units)
    return patches


def _names_a_head_count(attr):
    """Whether attribute ``attr`` is named like a number of heads (``num_heads``, ``n_head``), not like their size
    (``head_dim``, ``dim_head``, ``head_size``), which may equal the count by chance."""
    name = attr.lower()
    return "head" in name and not any(word in name for word in ("dim", "size", "width", "channel", "feat"))


def _common_parent(targets):
    """The deepest module name that every one of ``targets`` (qualified names) is inside (``""``: the model)."""
    parts = [target.split(".")[:-1] for target in targets]
    common = []
    for names in zip(*parts):
        if len(set(names)) > 1:
            break
        common.append(names[0])
    return ".".join(common)
