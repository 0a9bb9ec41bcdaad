"""From a parameter budget to the units each group loses.

The planner walks all units of all prunable groups from the least to the most important (a stable sort with
group and unit indices as tie-breaks) and removes them group by group in batches that keep every group's channel
count aligned, never removes more than ``max_group_ratio`` of a group, and stops when the exact parameter count of
the model lands within a small tolerance of the target. Parameter counts are exact: each tensor's new shape is
derived from the channels its layers keep, with tensors shared by several layers (tied embeddings) counted once.
"""
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from msmodelslim.pytorch.prune.layers import spec_of

TOLERANCE = 0.005  # fraction of the model's parameters the plan aims to land within, around the target
REPORTED_MISS = 0.02  # a plan further above the target than this is reported with its reason


class ParamCounter:
    """Exact parameter count of a model as channels are removed from groups."""

    def __init__(self, model, groups):
        self.base_total = sum(p.numel() for p in model.parameters())
        self._tensors = {}  # id -> [original shape, {axis: [(target, role, blocks)]}]
        self._role_size = {}
        self._removed = {}  # (target, role) -> channels removed so far
        for group in groups:
            for member in group.members:
                key = (member.target, member.role)
                if key in self._role_size:
                    continue
                spec = spec_of(model, member.target, member.axis)
                self._role_size[key] = spec.size(member.role)
                self._removed[key] = 0
                for axis in spec.roles()[member.role]:
                    tensor = spec.tensor(axis.tensor)
                    if not isinstance(tensor, torch.nn.Parameter):
                        continue
                    entry = self._tensors.setdefault(id(tensor), [list(tensor.shape), {}])
                    entry[1].setdefault(axis.axis % tensor.dim(), []).append((key, axis.blocks))
        self._touched_total = sum(math.prod(shape) for shape, _ in self._tensors.values())
        # unit -> channels of each member, per group
        self._unit_counts = []
        for group in groups:
            counts = []
            for member in group.members:
                roots = torch.as_tensor(member.roots, dtype=torch.long)
                counts.append(((member.target, member.role), torch.bincount(roots, minlength=group.size)))
            self._unit_counts.append(counts)
        self.current = self.base_total

    def _total(self, removed):
        total = self.base_total - self._touched_total
        for shape, axes in self._tensors.values():
            new_shape = list(shape)
            for axis, holders in axes.items():
                kept = min(self._role_size[key] - removed[key] for key, _ in holders)
                new_shape[axis] = kept * holders[0][1]
            total += math.prod(new_shape)
        return total

    def _with_units(self, group_index, units, sign=1):
        removed = dict(self._removed)
        index = torch.as_tensor(units, dtype=torch.long)
        for key, counts in self._unit_counts[group_index]:
            removed[key] += sign * int(counts[index].sum())
        return removed

    def evaluate(self, group_index, units):
        """Parameter count if ``units`` of group ``group_index`` were removed as well."""
        return self._total(self._with_units(group_index, units))

    def commit(self, group_index, units, sign=1):
        """Record ``units`` of group ``group_index`` as removed (``sign=-1``: as restored)."""
        self._removed = self._with_units(group_index, units, sign)
        self.current = self._total(self._removed)
        return self.current

    def uncommit(self, group_index, units):
        """Record ``units`` of group ``group_index`` as kept again."""
        return self.commit(group_index, units, sign=-1)


@dataclass
class Plan:
    """What to remove: ``removed[g]`` is the sorted list of removed units of group ``g``."""

    removed: dict
    params_before: int
    params_after: int
    target: int
    notes: list = field(default_factory=list)


DEFAULT_ALIGN = 16


def effective_align(group, align):
    """``align``; None is the default alignment (16, as the original), lowered for a group narrower than 8 times
    it to the largest power of two that is at most an eighth of its channels: a 64-channel layer moves in steps of
    8, not in quarters."""
    if align is not None:
        return align
    eighth = 1 << max(group.size * group.unit_channels // 8, 1).bit_length() - 1
    return min(DEFAULT_ALIGN, eighth)


def allowed_kept(group, align, max_group_ratio):
    """The unit counts a group may keep, in decreasing order (its full size first)."""
    channel_multiple = effective_align(group, align)
    for divisor in group.divisors:
        channel_multiple = channel_multiple * divisor // math.gcd(channel_multiple, divisor)
    step = channel_multiple // math.gcd(channel_multiple, group.unit_channels)
    max_removed = int(group.size * max_group_ratio + 1e-9)
    kept = [group.size]
    k = (group.size - 1) // step
    while k >= 1 and group.size - k * step <= max_removed:
        kept.append(k * step)
        k -= 1
    return kept


def _partial_members(group):
    """The unit sets of the members that hold only some of the group's units (one part of a concatenation or
    split): removing all of one would leave that layer without channels."""
    parts = {frozenset(member.roots) for member in group.members}
    return [part for part in parts if part and len(part) < group.size]


def _greedy(counter, groups, order, allowed, target, slack, close_on_overshoot):
    """Remove units in ``order`` batch by batch until the count is within ``slack`` above ``target``.

    A batch that would overshoot below ``target - slack`` closes its group when ``close_on_overshoot``; otherwise
    it is taken and the walk stops (see :func:`_restore`). A unit whose removal would empty one part of a group
    (see :func:`_partial_members`) is skipped.
    """
    removed = {g: [] for g in range(len(groups))}
    pending = {g: [] for g in range(len(groups))}
    parts = [_partial_members(group) for group in groups]
    closed = set()
    for _, g, u in order:
        if counter.current <= target + slack:
            break
        if g in closed:
            continue
        if parts[g]:
            gone = set(removed[g]) | set(pending[g]) | {u}
            if any(part <= gone for part in parts[g]):
                continue
        pending[g].append(u)
        kept = groups[g].size - len(removed[g]) - len(pending[g])
        if kept < min(allowed[g]):
            closed.add(g)
            continue
        if kept not in allowed[g]:
            continue
        if close_on_overshoot and counter.evaluate(g, pending[g]) < target - slack:
            closed.add(g)  # this batch overshoots; smaller groups may still land on the target
            continue
        counter.commit(g, pending[g])
        removed[g], pending[g] = sorted(removed[g] + pending[g]), []
    return removed


def _restore(counter, groups, order, allowed, removed, target, slack):
    """After an overshoot, give back the most important removed units, batch by batch, until the count is within
    ``slack`` of ``target`` again (without going above it)."""
    closed = set()
    back = {g: [] for g in removed}
    for _, g, u in reversed(order):
        if counter.current >= target - slack:
            break
        if g in closed or u not in removed[g]:
            continue
        back[g].append(u)
        kept = groups[g].size - len(removed[g]) + len(back[g])
        if kept not in allowed[g]:
            continue
        remaining = sorted(set(removed[g]) - set(back[g]))
        counter.uncommit(g, back[g])
        if counter.current > target + slack:
            counter.commit(g, back[g])
            closed.add(g)
            continue
        removed[g], back[g] = remaining, []
    return removed


def plan_pruning(model, groups, scores, reserved_ratio, max_group_ratio, align, tolerance=TOLERANCE,
                 make_counter=None, what="parameters"):
    """Choose the units to remove so the model keeps ``reserved_ratio`` of its parameters (or of the quantity
    counted by ``make_counter()``, e.g. a :class:`~msmodelslim.pytorch.prune.budgets.MacCounter`; then a unit's
    score is divided by what removing it saves, so the budget is met with the least importance lost).

    ``scores`` has one tensor per group (lower = removed first); protected groups are never touched. Two walks
    are tried - one that skips batches overshooting the target, one that takes the overshoot and gives back the
    most important units - and the one landing closer to the target wins (the first on a tie), unless it removes
    more than :data:`REPORTED_MISS` beyond the target and the other does not.
    """
    make_counter = make_counter or (lambda: ParamCounter(model, groups))
    probe = make_counter()
    total = probe.base_total
    target = int(round(total * reserved_ratio))
    slack = max(1, int(total * tolerance))
    allowed = [set(allowed_kept(g, align, max_group_ratio)) for g in groups]
    align = align or f"{DEFAULT_ALIGN} (fewer in narrow layers)"
    weights = _cost_weights(probe, groups) if make_counter is not None and what != "parameters" else None
    order = sorted((float(scores[g][u]) / (weights[g] if weights else 1.0), g, u)
                   for g, group in enumerate(groups) if not group.protected for u in range(group.size))
    walks = []
    for close in (True, False):
        counter = make_counter()
        removed = _greedy(counter, groups, order, allowed, target, slack, close_on_overshoot=close)
        if counter.current < target - slack:
            removed = _restore(counter, groups, order, allowed, removed, target, slack)
        walks.append((removed, counter.current, counter))
        if abs(counter.current - target) <= slack:
            break
    # the closest walk, but stopping short is better than removing more than 2 points beyond what was asked
    removed, kept, counter = min(walks, key=lambda walk: (walk[1] < target - total * REPORTED_MISS,
                                                          abs(walk[1] - target)))
    if abs(kept - target) > total * REPORTED_MISS:
        # coarse steps (a large alignment, few prunable groups): the walks, which only ever take the next batch of
        # the least important units, may step over the target where another mix of group sizes lands on it
        mix = _combination_search(make_counter, groups, order, allowed, target, total * REPORTED_MISS)
        if mix is not None:
            removed, kept, counter = mix
    notes = []
    if kept > target + total * REPORTED_MISS:
        step = _smallest_further_step(counter, groups, order, allowed, removed)
        if step is None:
            limit = (f"the alignment to {align} channels, node_reserved_ratio={max_group_ratio}, the protected "
                     f"layers and the parts of concatenations or splits (each keeps some channels) allow no more")
        else:
            count, group, channels_now, channels_next = step
            limit = (f"every further step the alignment to {align} channels allows removes too much (the smallest, "
                     f"{group.name} from {channels_now} to {channels_next} channels, would keep {count / total:.1%})")
        notes.append(f"kept {kept / total:.1%} of the {what} instead of {reserved_ratio:.1%}: {limit}"
                     + _protected_named(groups))
    elif kept < target - total * REPORTED_MISS:
        notes.append(
            f"kept {kept / total:.1%} of the {what} instead of {reserved_ratio:.1%}: with the alignment to {align} "
            "channels the smallest steps that reach the target remove more")
    params = ParamCounter(model, groups)
    for g, units in removed.items():
        if units:
            params.commit(g, units)
    return Plan(removed={g: u for g, u in removed.items() if u}, params_before=params.base_total,
                params_after=params.current, target=target, notes=notes)


def _units_by_size(group, units, allowed):
    """``{kept: removed units}`` for each size ``group`` may keep: its least important units (``units`` in order)
    first, never the last unit of one part of a concatenation or split; sizes that cannot be reached are left
    out."""
    parts, taken, by_size = _partial_members(group), [], {}
    sizes = sorted(allowed, reverse=True)
    for kept in sizes[1:]:
        for u in units:
            if len(taken) >= group.size - kept:
                break
            if u not in taken and not any(part <= set(taken) | {u} for part in parts):
                taken.append(u)
        if len(taken) < group.size - kept:
            break
        by_size[kept] = sorted(taken)
    return by_size


MIX_BUCKETS = 2000  # resolution of the approximate count in the combination search
MIX_PER_BUCKET = 4  # mixes kept per approximate count (two groups may save exactly as much alone)
MIX_SIZES = 64  # sizes per group the search considers at most (evenly spaced, both ends included)
MIX_CHECKED = 64  # candidate mixes counted exactly


def _combination_search(make_counter, groups, order, allowed, target, window):
    """A mix of group sizes whose exact count lands within ``window`` of ``target``, removing the least importance
    (the sum of the removed units' keys in ``order``), as ``(removed, count, counter)``; None when there is none.

    A dynamic programme over the groups on each size's count saving alone (an approximation: removing channels on
    both sides of one layer saves less than the two savings added) keeps the cheapest few mixes per approximate
    count; the closest proposals to ``target`` are then counted exactly.
    """
    probe = make_counter()
    total = probe.base_total
    keys, units = {}, {g: [] for g in range(len(groups))}
    for key, g, u in order:
        keys[(g, u)] = key
        units[g].append(u)
    options = []  # per group: [(saving, cost, removed units)], keeping nothing removed first
    alone = make_counter()
    for g, group in enumerate(groups):
        if group.protected or len(allowed[g]) < 2:
            continue
        sizes = list(_units_by_size(group, units[g], allowed[g]).values())
        if len(sizes) > MIX_SIZES:
            sizes = [sizes[round(i * (len(sizes) - 1) / (MIX_SIZES - 1))] for i in range(MIX_SIZES)]
        if sizes:
            probe.commit(g, sizes[-1])  # the most every group can lose, for the reach check below
            options.append((g, [(0, 0.0, [])] + [(total - alone.evaluate(g, removed),
                                                  sum(keys[(g, u)] for u in removed), removed) for removed in sizes]))
    if not options or probe.current > target + window:
        return None
    scale = MIX_BUCKETS / total
    width = MIX_BUCKETS + 1
    cost = np.full((MIX_PER_BUCKET, width), np.inf)  # [k, bucket]: the k-th cheapest mix saving about bucket
    cost[0, 0] = 0.0
    steps = []  # per group: its choices' bucket shifts, and per [k, bucket] the choice and the earlier k taken
    for g, choices in options:
        shifts = [int(round(saving * scale)) for saving, _, _ in choices]
        candidates = np.full((len(choices) * MIX_PER_BUCKET, width), np.inf)
        for c, ((_, extra, _), shift) in enumerate(zip(choices, shifts)):
            if shift < width:
                candidates[c * MIX_PER_BUCKET:(c + 1) * MIX_PER_BUCKET, shift:] = cost[:, :width - shift] + extra
        best = np.argsort(candidates, axis=0, kind="stable")[:MIX_PER_BUCKET]
        cost = np.take_along_axis(candidates, best, axis=0)
        steps.append((g, choices, shifts, best // MIX_PER_BUCKET, best % MIX_PER_BUCKET))
    wanted = (total - target) * scale
    found = [(abs(b - wanted), cost[k, b], k, b) for k, b in zip(*np.nonzero(np.isfinite(cost)))]
    chosen = None
    for _, mix_cost, k, b in sorted(found)[:MIX_CHECKED]:
        picks = {}
        for g, choices, shifts, choice, earlier in reversed(steps):
            c = int(choice[k, b])
            if choices[c][2]:
                picks[g] = choices[c][2]
            k, b = int(earlier[k, b]), b - shifts[c]
        counter = make_counter()
        for g, removed in picks.items():
            counter.commit(g, removed)
        if abs(counter.current - target) <= window and (chosen is None or mix_cost < chosen[0]):
            chosen = (mix_cost, picks, counter)
    if chosen is None:
        return None
    return {g: [] for g in range(len(groups))} | chosen[1], chosen[2].current, chosen[2]


def _smallest_further_step(counter, groups, order, allowed, removed):
    """``(count after it, group, channels before, channels after)`` of the one-group step - down to the group's next
    allowed size, its least important remaining units first, none that would empty one part of the group - that
    removes the least, or None when no group can shrink further."""
    gone = {g: set(units) for g, units in removed.items()}
    remaining = {g: [] for g in range(len(groups))}
    for _, g, u in order:
        if u not in gone.get(g, ()):
            remaining[g].append(u)
    best = None
    for g, units in remaining.items():
        kept = groups[g].size - len(removed.get(g, ()))
        smaller = [k for k in allowed[g] if k < kept]
        step, parts, taken = kept - max(smaller, default=kept), _partial_members(groups[g]), []
        for u in units:  # as the walks do: never the last unit of one part of a concatenation or split
            if len(taken) < step and not any(part <= gone.get(g, set()) | set(taken) | {u} for part in parts):
                taken.append(u)
        if not smaller or len(taken) < step:
            continue
        count = counter.evaluate(g, taken)
        if best is None or count > best[0]:
            unit = groups[g].unit_channels
            best = (count, groups[g], kept * unit, max(smaller) * unit)
    return best


def _protected_named(groups, shown=3):
    """`` (protected: group - reason; ...)`` for the first ``shown`` protected groups, or an empty string."""
    protected = [f"{group.name} - {group.protected}" for group in groups if group.protected]
    if not protected:
        return ""
    more = f"; {len(protected) - shown} more" if len(protected) > shown else ""
    return f" (protected: {'; '.join(protected[:shown])}{more})"


def _cost_weights(counter, groups):
    """Per group: what removing one unit saves, divided by the mean over the prunable groups (a group whose units
    save nothing gets an infinite key: it is never worth removing)."""
    saved = []
    for g, group in enumerate(groups):
        saved.append(max(counter.base_total - counter.evaluate(g, [0]), 0) if group.size and not group.protected
                     else 0)
    positive = [s for s in saved if s > 0]
    mean = sum(positive) / len(positive) if positive else 1
    return [s / mean if s > 0 else 1e-12 for s in saved]
