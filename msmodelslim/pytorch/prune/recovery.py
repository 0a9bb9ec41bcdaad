"""Finding the channel group whose pruning breaks a model, so that it can be protected and the plan made again.

When the pruned model fails to run, the groups of the plan are applied in prefixes (each a trial: applied, run,
restored) and a bisection finds the first group whose addition breaks the model: ``log2(groups)`` trial runs.
The same block repeated in every layer usually breaks the same way, so the group's *siblings* (the groups whose
members have the same names once layer numbers are ignored) are protected with it.
"""
import re
from msmodelslim.utils.logging import logger

MAX_REPLANS = 16  # bisections (each protecting a group and its siblings) before giving up


def find_breaking_group(removed, runs_with):
    """The group index, among the keys of ``removed`` (``{group: units}``), whose removal breaks the model given
    the groups before it; ``runs_with(subset)`` applies a subset as a trial and says whether the model still runs.
    None when the whole plan runs (the failure came from elsewhere)."""
    order = sorted(removed)
    if not order or runs_with(removed):
        return None
    good, bad = 0, len(order)  # order[:good] runs, order[:bad] does not
    while bad - good > 1:
        middle = (good + bad) // 2
        if runs_with({g: removed[g] for g in order[:middle]}):
            good = middle
        else:
            bad = middle
    return order[bad - 1]


def _signature(group):
    return tuple(sorted((re.sub(r"\d+", "#", m.target), m.role, m.axis) for m in group.members))


def siblings_of(groups, index):
    """The indices of the groups shaped like ``groups[index]`` (itself included): the same member names and roles
    once numbers are ignored, and the same size."""
    wanted = (_signature(groups[index]), groups[index].size)
    return {i for i, group in enumerate(groups) if (_signature(group), group.size) == wanted}


def _described(exc):
    """``exc``'s message, or its type's name when it has none (a bare ``assert``)."""
    return str(exc) or type(exc).__name__


def prune_with_recovery(plan, apply, trial):
    """Apply ``plan(blamed)`` (a plan avoiding the group indices in ``blamed``); when the pruned model fails to run, find
    the group responsible with :func:`find_breaking_group` over ``trial(plan, subset)``, protect it and plan again.

    ``plan(blamed)`` returns an object with ``removed`` and ``groups``; ``apply(planned)`` returns the plan as
    applied, or raises ``ValueError`` when a layer rule refuses the plan or ``PrunedModelError`` (a ``ValueError``)
    when the pruned model fails to run; either way the model is unchanged and the plan, being ours, is repaired.
    Returns the applied plan.

    Raises:
        ValueError: still failing after :data:`MAX_REPLANS` repairs (each protecting a group and its siblings), or
            no group is to blame.
    """
    blamed, replans = set(), 0
    while True:
        planned = plan(blamed)
        try:
            return apply(planned)
        except ValueError as exc:
            if replans >= MAX_REPLANS:
                raise
            replans += 1
            culprit = find_breaking_group(planned.removed, lambda subset: trial(planned, subset))
            if culprit is None:
                raise
            siblings = siblings_of(planned.groups, culprit)
            logger.info("Pruning group %s breaks the model (%s); it is protected%s and the plan is made again.",
                        planned.groups[culprit].name, _described(exc.__cause__ or exc),
                        f" with {len(siblings) - 1} group(s) of the same shape in other layers" if len(siblings) > 1
                        else "")
            logger.debug("Where the pruned model fails:", exc_info=exc.__cause__ or exc)
            blamed.update(siblings)
