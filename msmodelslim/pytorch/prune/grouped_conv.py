"""Grouped (non-depthwise) convolutions are pruned by whole groups.

The dependency graph gives a grouped convolution two channel groups: the one its input channels belong to (with
the layers producing them) and the one its output channels belong to (with the layers reading them). Removing
conv group ``j`` removes input channels ``[j * in_width, (j + 1) * in_width)`` and output channels
``[j * out_width, (j + 1) * out_width)`` together, so the two groups are merged into one whose units are the conv
groups: each unit of either side is re-labelled with the conv group its channel falls in.
"""
from msmodelslim.pytorch.prune.groups import ChannelGroup, Member
from msmodelslim.pytorch.prune.layers import INPUT, OUTPUT, layer_spec


def _sides(groups, name, role):
    """``[(index, member)]`` of the groups holding ``role`` of layer ``name`` (several when the channels are a
    concatenation of tensors from different groups)."""
    return [(index, member) for index, group in enumerate(groups) for member in group.members
            if member.target == name and member.role == role and member.axis is None]


def _conv_group_of_unit(member, width, size):
    """``{unit: conv group}`` from the conv's own member (channel ``c`` of unit ``r`` is in group ``c // width``),
    or None when a unit does not map to exactly one conv group."""
    mapping = {}
    for channel, unit in zip(member.idxs, member.roots):
        group = channel // width
        if mapping.setdefault(unit, group) != group:
            return None
    return mapping if len(mapping) == size else None


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
        inputs, outputs = _sides(groups, name, INPUT), _sides(groups, name, OUTPUT)
        if len(inputs) > 1 or len(outputs) > 1:
            # e.g. a concatenation of three layers' outputs feeding it: its conv groups straddle channel groups
            for index in {index for index, _ in inputs + outputs}:
                groups[index].protected = groups[index].protected or (
                    f"grouped convolution {name}: its channels come from several channel groups")
            continue
        if not inputs or not outputs:
            continue
        (a, in_member), (b, out_member) = inputs[0], outputs[0]
        reason = None
        if a == b:
            reason = f"{name}: its input and output channels are coupled with each other"
        elif a in merged_away or b in merged_away or groups[a].kind == "conv_groups" or groups[b].kind == "conv_groups":
            reason = f"{name}: its channels are shared with another grouped convolution"
        in_map = _conv_group_of_unit(in_member, in_width, groups[a].size) if reason is None else None
        out_map = _conv_group_of_unit(out_member, out_width, groups[b].size) if reason is None else None
        if reason is None and (in_map is None or out_map is None):
            reason = f"{name}: its channel groups do not map to whole convolution groups"
        if reason:
            for index in (a, b):
                groups[index].protected = groups[index].protected or f"grouped convolution {reason}"
            continue
        protected = groups[a].protected or groups[b].protected
        groups[a] = ChannelGroup(name=f"{name} (conv groups)", size=module.groups,
                                 members=_relabel(groups[a], in_map) + _relabel(groups[b], out_map),
                                 kind="conv_groups", unit_channels=out_width, protected=protected,
                                 divisors=sorted(set(groups[a].divisors) | set(groups[b].divisors)))
        merged_away.add(b)
    return [group for index, group in enumerate(groups) if index not in merged_away]
