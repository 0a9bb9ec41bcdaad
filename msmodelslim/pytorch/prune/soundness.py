"""Checking that a channel group can be pruned consistently before anything relies on it.

Whatever built a group (the torch-pruning dependency graph or the family rules), each member must name a layer
(or bare parameter) whose role really has the channels the group addresses: every tensor of the role carries the
same number of channels, every index is one of them, every unit index is one of the group's units. A per-head
table coupled to hidden channels, a bias laid out by heads or an embedding indexed by channel fails one of these
checks; such a group is protected (never sliced wrongly, never an ``IndexError`` later) and named in the log.
"""
from msmodelslim.pytorch.prune.layers import spec_of


def unsound_reason(model, group):
    """Why ``group`` cannot be pruned consistently, naming the member, or None when it can."""
    if group.size < 1:
        return "it has no prunable units"
    for member in group.members:
        reason = _member_reason(model, group, member)
        if reason:
            return reason
    return None


def _member_reason(model, group, member):
    where = f"{member.target} ({member.role})"
    try:
        spec = spec_of(model, member.target, member.axis)
        roles = spec.roles()
    except (LookupError, TypeError, AttributeError) as exc:
        return f"{where}: {exc}"
    if member.role not in roles:
        return f"{where}: the layer has no {member.role} channels"
    if len(member.idxs) != len(member.roots):
        return f"{where}: {len(member.idxs)} channel indices for {len(member.roots)} units"
    if len(set(member.idxs)) != len(member.idxs):
        return f"{where}: a channel belongs to more than one unit"
    try:
        size = spec.size(member.role)
        for axis in roles[member.role]:
            tensor = spec.tensor(axis.tensor)
            if tensor is None:
                continue
            length = tensor.shape[axis.axis]
            if length != size * axis.blocks:
                return (f"{where}: its tensor '{axis.tensor}' has {length} entries along axis {axis.axis}, not the "
                        f"layer's {size} channels, so its pruned axis cannot be established")
    except (IndexError, AttributeError, TypeError) as exc:
        return f"{where}: {exc}"
    if member.idxs and (min(member.idxs) < 0 or max(member.idxs) >= size):
        return (f"{where}: the group addresses channel {max(member.idxs)} but the layer has {size} (a per-head or "
                "otherwise differently laid out tensor)")
    if member.roots and (min(member.roots) < 0 or max(member.roots) >= group.size):
        return f"{where}: unit {max(member.roots)} is outside the group's {group.size} units"
    return None


def protect_unsound(model, groups):
    """Protect (with the reason) every group that :func:`unsound_reason` rejects, and give the others the channel
    multiples their layers need (GroupNorm groups, attention heads) as divisors; returns the groups."""
    for group in groups:
        if group.protected:
            continue
        reason = unsound_reason(model, group)
        if reason:
            group.protected = "cannot be pruned consistently: " + reason
            continue
        for member in group.members:
            multiple = spec_of(model, member.target, member.axis).channel_multiple(member.role)
            if multiple > 1 and multiple not in group.divisors:
                group.divisors.append(multiple)
    return groups
