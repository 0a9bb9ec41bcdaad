"""Importance of the units of each channel group (lower = pruned first).

Built-in criteria score a unit over *all* coupled tensors of its group (every member's weights, as in DepGraph)
and normalise the scores per group so that they compare across layers. Weight norms are not comparable between
layers separated by normalisation layers, so the weight criteria (``l1``, ``l2``, ``bn_scale``) are normalised by
rank: a group's units spread evenly over (0, 1), which removes about the same share of every group and picks the
weakest units inside each. Activations and Taylor scores are on a common scale and are divided by their group's
mean instead, so the planner may prune some layers much more than others. On trained networks this choice is
measured in the README (digits CNN and EfficientNet-Lite0):

* ``"l1"`` (default): mean |w| of the unit's weights in each member, averaged over members;
* ``"l2"``: root-mean-square of the same weights;
* ``"taylor"``: mean |w * dL/dw| (first-order Taylor expansion of the loss, Molchanov et al. 2019);
* ``"bn_scale"``: |gamma| of the group's normalisation layers (network slimming, Liu et al. 2017); groups
  without one fall back to ``"l1"``;
* ``"activation"``: mean |x| of the unit's channels where they enter the next layers, on the sample inputs;
* ``"random"``: uniform noise from a fixed seed (a baseline).

A user callable ``fn(weight_slice) -> float`` is called as in the original msModelSlim, on the slice of the
group's first producing layer (``conv.weight[idxs]``, ``linear.weight[i]``); its raw values are compared across
layers, without normalisation.
"""
import math

import torch

from msmodelslim.pytorch.prune.layers import INPUT, OUTPUT, spec_of
from msmodelslim.pytorch.utils.calibration import eval_mode, first_tensor, hooks

BUILTIN = ("l1", "l2", "taylor", "bn_scale", "activation", "random")
PRODUCER_KINDS = ("linear", "conv", "conv1d", "depthwise_conv")


def _channel_sums(values, axis, blocks):
    """Per-channel (sum, elements per channel) of ``values`` along ``axis``; fused blocks are added together."""
    dim = axis % values.dim()
    moved = values.movedim(dim, 0).reshape(values.shape[dim], -1)
    sums, count = moved.sum(1), moved.shape[1]
    if blocks > 1:
        sums = sums.view(blocks, -1).sum(0)
        count *= blocks
    return sums, count


def _to_units(member, per_channel, size):
    """Sum of ``per_channel`` over each unit's indices of ``member``, and the number of indices per unit."""
    idxs = torch.as_tensor(member.idxs, dtype=torch.long)
    roots = torch.as_tensor(member.roots, dtype=torch.long)
    per_channel = per_channel.detach().double().cpu()  # scores are small; they live on the CPU whatever the model
    totals = torch.zeros(size, dtype=torch.float64).index_add_(0, roots, per_channel[idxs])
    counts = torch.zeros(size, dtype=torch.float64).index_add_(0, roots, torch.ones(len(idxs), dtype=torch.float64))
    return totals, counts


def _weight_score(model, group, value_of, only_norms=False):
    """Per unit: mean over members of the mean of ``value_of(tensor)`` over the member's weights, or None.

    ``value_of`` maps a weight tensor to the per-element values to average (None to skip the tensor).
    """
    per_member = []
    for member in group.members:
        spec = spec_of(model, member.target, member.axis)
        if only_norms and spec.kind not in ("norm", "layernorm"):
            continue
        totals = torch.zeros(group.size, dtype=torch.float64)
        counts = torch.zeros(group.size, dtype=torch.float64)
        for axis in spec.roles()[member.role]:
            if member.axis is None and (axis.tensor.endswith("bias") or "running_" in axis.tensor):
                continue  # biases and running statistics live on another scale
            values = value_of(spec.tensor(axis.tensor))
            if values is None:
                continue
            sums, count = _channel_sums(values, axis.axis, axis.blocks)
            unit_sums, unit_counts = _to_units(member, sums, group.size)
            totals += unit_sums
            counts += unit_counts * count
        if counts.sum() > 0:
            per_member.append(totals / counts.clamp(min=1))
    if not per_member:
        return None
    return torch.stack(per_member).mean(0)


def _normalise(scores):
    """Divide by the group's mean (for criteria on a common scale across layers)."""
    mean = scores.mean()
    return scores / mean if mean > 0 else scores


def _rank_normalise(scores):
    """Replace scores by their rank within the group, as (rank + 0.5) / size (stable: ties keep unit order)."""
    ranks = torch.empty_like(scores)
    ranks[torch.argsort(scores, stable=True)] = torch.arange(len(scores), dtype=scores.dtype)
    return (ranks + 0.5) / len(scores)


def _abs(tensor):
    return tensor.detach().float().abs()


def _square(tensor):
    return tensor.detach().float().square()


def _taylor(tensor):
    return None if tensor.grad is None else (tensor.detach().float() * tensor.grad.float()).abs()


def compute_gradients(model, call, loss_fn):
    """Fill ``.grad`` of every parameter with d loss_fn(model output) / d parameter, on the sample inputs.

    Returns the previous ``.grad`` values so that :func:`restore_gradients` can put them back.
    """
    saved = {p: p.grad for p in model.parameters()}
    for param in model.parameters():
        param.grad = None
    with eval_mode(model), torch.enable_grad():
        loss = loss_fn(call(model))
        loss.backward()
    return saved


def restore_gradients(saved):
    for param, grad in saved.items():
        param.grad = grad


def _activation_scores(model, groups, call):
    """Mean |x| per channel at the inputs of the layers consuming each group (their outputs if none does)."""
    wanted = {}
    for group in groups:
        for member in group.members:
            if member.axis is None and member.role in (INPUT, OUTPUT):
                wanted[member.target] = spec_of(model, member.target).kind
    stats, empty = {}, []

    def record(name, module, inputs, output):
        kind = wanted[name]
        for where, value in (("input", first_tensor(inputs)), ("output", first_tensor(output))):
            if value is None or not torch.is_floating_point(value):
                continue
            if value.numel() == 0:
                empty.append(name)
                continue
            channel_dim = 1 if kind in ("conv", "depthwise_conv") and value.dim() > 2 else -1
            moved = value.detach().float().abs().movedim(channel_dim, 0)
            sums = moved.reshape(moved.shape[0], -1).mean(1)
            key = (name, where)
            stats[key] = stats.get(key, 0) + sums

    modules = [(name, model.get_submodule(name)) for name in wanted if wanted[name] in PRODUCER_KINDS]
    with eval_mode(model), torch.no_grad(), hooks(modules, record):
        call(model)
    if empty and not stats:
        raise ValueError(f"activation importance needs at least one sample: the sample inputs gave empty activations "
                         f"(at layer '{empty[0]}'; a batch of 0 samples?).")
    scores = []
    for group in groups:
        per_member = []
        for role, where in ((INPUT, "input"), (OUTPUT, "output")):
            for member in group.members:
                stat = stats.get((member.target, where))
                if member.role != role or member.axis is not None or stat is None or stat.shape[0] <= max(member.idxs):
                    continue
                totals, counts = _to_units(member, stat, group.size)
                per_member.append(totals / counts.clamp(min=1))
            if per_member:
                break
        if per_member:
            scores.append(_normalise(torch.stack(per_member).mean(0)))
        else:
            scores.append(_normalise(_weight_score(model, group, _abs)))
    return scores


def _callable_scores(model, groups, fn):
    scores = []
    for group in groups:
        producer = None
        for member in group.members:
            spec = spec_of(model, member.target, member.axis)
            if member.role == OUTPUT and spec.kind in PRODUCER_KINDS:
                producer = (member, spec)
                break
        member, spec = producer or (group.members[0], spec_of(model, group.members[0].target, group.members[0].axis))
        axis = spec.roles()[member.role][0]
        weight = spec.tensor(axis.tensor).detach()
        values = []
        for unit in range(group.size):
            idxs = member.indices_of_units([unit])
            if spec.kind == "linear" and len(idxs) == 1 and axis.axis == 0:
                piece = weight[idxs[0]]
            else:
                piece = weight.index_select(axis.axis % weight.dim(), torch.as_tensor(idxs, device=weight.device))
            values.append(_finite_score(fn(piece), group, member.target, unit))
        scores.append(torch.tensor(values, dtype=torch.float64))
    return scores


def _finite_score(value, group, target, unit):
    """``float(value)``, refusing NaN and infinity with a ``ValueError`` naming the group, layer and unit."""
    score = float(value)
    if not math.isfinite(score):
        raise ValueError(f"The importance function returned {score} for unit {unit} of group '{group.name}' "
                         f"(layer '{target}'); it must return a finite number.")
    return score


def _check_finite(groups, scores, method):
    """Refuse NaN or infinite scores (NaN weights or activations), naming the first group that has them."""
    for group, score in zip(groups, scores):
        if score is not None and not torch.isfinite(score).all():
            raise ValueError(f"Importance '{method}' of group '{group.name}' is NaN or infinite; check the weights "
                             "and sample inputs of its layers for NaN/inf values.")
    return scores


def group_importance(model, groups, method="l1", call=None, loss_fn=None):
    """Scores (one float64 tensor of ``group.size`` values per group) of the units of ``groups``; protected
    groups get zeros (they are never pruned).

    Raises:
        ValueError: an unknown method name, ``"taylor"`` without gradients or loss_fn, ``"activation"`` on inputs
            of 0 samples, or a NaN/infinite score (the message names the group).
    """
    scored = [g for g in groups if not g.protected]  # a protected group may not even be consistent: never scored
    if callable(method) and not isinstance(method, str):
        scores = _callable_scores(model, scored, method)
    else:
        scores = _check_finite(scored, _builtin_scores(model, scored, method, call, loss_fn), method)
    by_group = {id(g): s for g, s in zip(scored, scores)}
    return [by_group.get(id(g), torch.zeros(g.size, dtype=torch.float64)) for g in groups]


def _builtin_scores(model, groups, method, call, loss_fn):
    """Scores of a built-in criterion (see :func:`group_importance`)."""
    if method not in BUILTIN:
        raise ValueError(f"importance must be a callable or one of {list(BUILTIN)}, got {method!r}.")
    if method == "random":
        generator = torch.Generator().manual_seed(0)
        return [torch.rand(g.size, generator=generator, dtype=torch.float64) for g in groups]
    if method == "activation":
        return _activation_scores(model, groups, call)
    if method == "taylor":
        saved = compute_gradients(model, call, loss_fn) if loss_fn is not None else None
        try:
            if all(p.grad is None for p in model.parameters()):
                raise ValueError("importance 'taylor' needs gradients: pass loss_fn=... to "
                                 "set_importance_evaluation_function, or call backward() before pruning.")
            scores = [_weight_score(model, g, _taylor) for g in groups]
            return [_normalise(s) if s is not None else torch.zeros(g.size, dtype=torch.float64)
                    for s, g in zip(scores, groups)]
        finally:
            if saved is not None:
                restore_gradients(saved)
    value_of = _square if method == "l2" else _abs
    scores = []
    for group in groups:
        score = _weight_score(model, group, value_of, only_norms=(method == "bn_scale"))
        if score is None:
            score = _weight_score(model, group, _abs)
        if method == "l2":
            score = score.sqrt()
        scores.append(_rank_normalise(score))
    return scores
