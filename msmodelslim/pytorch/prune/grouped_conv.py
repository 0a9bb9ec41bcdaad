"""Grouped (non-depthwise) convolutions are pruned by whole groups.

The dependency graph gives a grouped convolution two channel groups: the one its input channels belong to (with
the layers producing them) and the one its output channels belong to (with the layers reading them). Removing
conv group ``j`` removes input channels ``[j * in_width, (j + 1) * in_width)`` and output channels
``[j * out_width, (j + 1) * out_width)`` together, so the two groups are merged into one whose units are the conv
groups: each unit of either side is re-labelled with the conv group its channel falls in. When the input is a
concatenation of several channel groups, all of them join, as long as each unit falls in one conv group and some
conv group holds no part whole. A side that is already the conv groups of another grouped convolution (two in a
row) joins the same way: each of its units - a conv group of the other - must fall in one conv group of this one.
"""
from msmodelslim.pytorch.prune.groups import ChannelGroup, Member
from msmodelslim.pytorch.prune.layers import INPUT, OUTPUT, layer_spec


def _sides(groups, name, role, merged_away):
    """``[(index, member)]`` of the groups holding ``role`` of layer ``name`` (several when the channels are a
    concatenation of tensors from different groups)."""
    return [(index, member) for index, group in enumerate(groups) if index not in merged_away
            for member in group.members if member.target == name and member.role == role and member.axis is None]


def _conv_group_of_unit(member, width, size):
    """``{unit: conv group}`` from the conv's own member (channel ``c`` of unit ``r`` is in group ``c // width``),
    or None when a unit does not map to exactly one conv group."""
    mapping = {}
    for channel, unit in zip(member.idxs, member.roots):
        group = channel // width
        if mapping.setdefault(unit, group) != group:
            return None
    return mapping if len(mapping) == size else None


def _removable(input_maps, conv_groups):
    """Whether some conv group can go: one that holds no input part whole (removing it would leave that part's
    layer without channels)."""
    spans = [set(mapping.values()) for mapping in input_maps]
    return len({conv_group for span in spans if len(span) == 1 for conv_group in span}) < conv_groups


def _relabel(group, mapping):
    return [Member(m.target, m.role, list(m.idxs), [mapping[r] for r in m.roots], m.axis) for m in group.members]


def couple_grouped_convs(model, groups):
    """Merge, for every grouped convolution of ``model``, the groups of its input and output channels into one
    group of whole conv groups; where that is impossible (both sides in one group, a side shared with another
    grouped convolution, channels that do not map to whole groups) both sides are protected, with the reason.
    Returns the new list of groups."""
    groups = list(groups)
    merged_away = set()
    for name, module in model.named_modules():
        spec = layer_spec(module)
        if spec is None or spec.kind != "grouped_conv":
            continue
        out_width, in_width = spec.group_widths()
        inputs, outputs = _sides(groups, name, INPUT, merged_away), _sides(groups, name, OUTPUT, merged_away)
        if not inputs or not outputs:
            continue
        sides = [index for index, _ in inputs + outputs]
        reason = None
        if len(outputs) > 1:
            reason = f"{name}: its output channels belong to several channel groups"
        elif len(set(sides)) < len(sides):
            reason = f"{name}: its input and output channels are coupled with each other"
        # per side, {unit: conv group}: None where a unit spans two conv groups (then the sides cannot join)
        maps = [_conv_group_of_unit(member, width, groups[index].size)
                for (index, member), width in zip(inputs + outputs, [in_width] * len(inputs) + [out_width])
                ] if reason is None else []
        if reason is None and any(mapping is None for mapping in maps):
            reason = (f"{name}: its channels come from several channel groups" if len(inputs) > 1 else
                      f"{name}: its channel groups do not map to whole convolution groups")
        elif reason is None and len(inputs) > 1 and not _removable(maps[:len(inputs)], module.groups):
            reason = f"{name}: its channels come from several channel groups"
        if reason:
            for index in set(sides):
                groups[index].protected = groups[index].protected or f"grouped convolution {reason}"
            continue
        members = [m for index, mapping in zip(sides, maps) for m in _relabel(groups[index], mapping)]
        groups[sides[0]] = ChannelGroup(
            name=f"{name} (conv groups)", size=module.groups, members=members, kind="conv_groups",
            unit_channels=out_width, protected=next((groups[i].protected for i in sides if groups[i].protected), None),
            divisors=sorted({d for i in sides for d in groups[i].divisors}))
        merged_away.update(sides[1:])
    return [group for index, group in enumerate(groups) if index not in merged_away]
