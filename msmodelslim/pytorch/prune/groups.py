"""Channel groups: the sets of coupled channels that must be removed together.

Both engines (the torch-pruning dependency graph for generic models, and the structure rules of known transformer
families) describe a model as a list of :class:`ChannelGroup`. A group has ``size`` prunable *units* (a channel, a
neuron, an attention head or a key/value group of heads); each :class:`Member` says which indices of one layer's
role belong to which unit. Everything downstream (importance, planning, the ``desc``) works on this description.
"""
from dataclasses import dataclass, field


@dataclass
class Member:
    """Indices ``idxs`` of ``role`` of layer ``target`` belong to units ``roots`` (parallel lists).

    ``target`` is a module's qualified name, or a bare parameter's qualified name when ``axis`` is set.
    """

    target: str
    role: str
    idxs: list
    roots: list
    axis: int = None

    def indices_of_units(self, units):
        """The indices of this member that belong to any of ``units``, sorted."""
        units = set(units)
        return sorted({i for i, r in zip(self.idxs, self.roots) if r in units})


@dataclass
class ChannelGroup:
    """Coupled channels: removing unit ``u`` removes ``member.indices_of_units([u])`` from every member."""

    name: str
    size: int
    members: list
    kind: str = "channels"
    unit_channels: int = 1
    protected: str = None  # why the group must not be pruned, or None
    divisors: list = field(default_factory=list)  # kept channel counts must be multiples of each
    head_splits: list = field(default_factory=list)  # (channels, heads, head size) of reshapes it cuts whole heads of

    def member_targets(self, role=None):
        return [m.target for m in self.members if role is None or m.role == role]

    def describe(self):
        """A one-line summary: name, kind, size and members."""
        members = ", ".join(f"{m.target}[{m.role}]" for m in self.members)
        return f"{self.name} ({self.kind}, {self.size} units): {members}"

    def to_dict(self):
        return {"name": self.name, "size": self.size, "kind": self.kind, "unit_channels": self.unit_channels,
                "protected": self.protected, "divisors": list(self.divisors),
                "head_splits": [list(split) for split in self.head_splits],
                "members": [[m.target, m.role, list(m.idxs), list(m.roots), m.axis] for m in self.members]}

    @classmethod
    def from_dict(cls, data):
        members = [Member(t, r, list(i), list(o), a) for t, r, i, o, a in data["members"]]
        return cls(name=data["name"], size=data["size"], members=members, kind=data["kind"],
                   unit_channels=data["unit_channels"], protected=data["protected"], divisors=data["divisors"],
                   head_splits=[tuple(split) for split in data["head_splits"]])


def tie_groups(groups, scores, keys):
    """Merge the groups that share a key (e.g. the FFN groups of every layer) so they keep the same count.

    Unit ``r`` of a merged group is the ``r``-th least important unit of each of its groups, scored by the mean of
    their scores; so every layer keeps the same number of units, each layer choosing its own. Groups with key
    None stay as they are. Returns ``(groups, scores, untie)`` where ``untie(removed)`` maps the removed units of
    the returned groups back to the input groups.
    """
    import torch

    buckets = {}
    for index, key in enumerate(keys):
        if key is not None:
            buckets.setdefault((key, groups[index].size), []).append(index)
    merged_into = {}
    new_groups, new_scores, origins = [], [], []
    for index, group in enumerate(groups):
        key = keys[index]
        bucket = buckets.get((key, group.size)) if key is not None else None
        if bucket is None or len(bucket) == 1:
            new_groups.append(group)
            new_scores.append(scores[index])
            origins.append([(index, None)])
            continue
        if index in merged_into:
            continue
        members, parts, orders = [], [], []
        for i in bucket:
            order = torch.argsort(scores[i], stable=True)
            rank_of = torch.empty_like(order)
            rank_of[order] = torch.arange(len(order))
            orders.append((i, order.tolist()))
            parts.append(scores[i][order])
            for m in groups[i].members:
                members.append(Member(m.target, m.role, list(m.idxs), [int(rank_of[r]) for r in m.roots], m.axis))
            merged_into[i] = len(new_groups)
        protected = next((groups[i].protected for i in bucket if groups[i].protected), None)
        new_groups.append(ChannelGroup(name=f"{group.kind} of {len(bucket)} layers", size=group.size,
                                       members=members, kind=group.kind, unit_channels=group.unit_channels,
                                       protected=protected, divisors=list(group.divisors)))
        new_scores.append(torch.stack(parts).mean(0))
        origins.append(orders)

    def untie(removed):
        result = {}
        for j, units in removed.items():
            for index, order in origins[j]:
                result[index] = sorted(units) if order is None else sorted(order[r] for r in units)
        return result

    return new_groups, new_scores, untie
