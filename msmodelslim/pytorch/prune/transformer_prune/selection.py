"""Choosing which heads, FFN neurons and hidden channels of the checkpoint the small model keeps.

* ``"weight"`` (data-free): a unit's score is the L2 norm of its slices in every coupled tensor, each tensor's
  norms divided by their mean so that all tensors weigh alike;
* ``"activation"`` (Minitron, Muralidharan et al. 2024): mean |activation| on calibration data, collected block by
  block in the big model: FFN neurons at the down projection's input, heads at the output projection's input,
  hidden channels at the outputs of the normalisation layers.

Grouped-query attention keeps whole key/value groups (the best-scoring ones), and in each the best query heads.
Ties are broken by the lower index, so the choice is deterministic.
"""
import torch

from msmodelslim.common.prune.transformer_prune import activation_importance
from msmodelslim.pytorch.prune.layers import INPUT, layer_spec
from msmodelslim.pytorch.prune.transformer_prune.layout import FFN, HIDDEN, KV, Q, QKV, HeadsGroup
from msmodelslim.pytorch.utils.calibration import CallParams, first_tensor, hooks, run
from msmodelslim.utils.logging import logger
from msmodelslim.pytorch.utils.sequential import find_blocks, iterate_blocks


def top_indices(scores, count):
    """The ``count`` best-scoring indices, ascending; ties go to the lower index."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:count])


def _channel_norms(tensor, axis):
    moved = tensor.detach().float().movedim(axis, 0)
    norms = moved.reshape(moved.shape[0], -1).norm(dim=1)
    mean = norms.mean()
    return norms / mean if mean > 0 else norms


def weight_scores(layout, read):
    """Per group: per-channel scores (``{view: tensor}``) from the norms of the group's tensors.

    ``read(key)`` gives the checkpoint tensor that becomes the small model's ``key``.
    """
    sums, counts = {}, {}
    for (key, axis), (group, view, _) in layout.axes.items():
        if not group.changes:
            continue
        norms = _channel_norms(read(key), axis)
        if view == QKV:  # thirds of a fused projection: q, k and v channels of the same heads
            norms = norms.view(3, -1).sum(0)
            view = Q
        slot = (id(group), view)
        sums[slot] = sums.get(slot, 0) + norms
        counts[slot] = counts.get(slot, 0) + 1
    return {slot: sums[slot] / counts[slot] for slot in sums}


def _head_scores(group, channel_scores):
    """Per query head and per key/value group, from per-channel scores of the q and kv views."""
    (heads, kv_heads), hd = group.big, group.head_dim
    q = channel_scores.get((id(group), Q))
    kv = channel_scores.get((id(group), KV))
    per_head = q.view(heads, hd).mean(1) if q is not None else torch.zeros(heads)
    per_group = per_head.view(kv_heads, -1).sum(1)
    if kv is not None:
        per_group = per_group + kv.view(kv_heads, hd).mean(1)
    return per_head, per_group


def choose_heads(group, channel_scores):
    """Fill ``group.keep`` with the best key/value groups and, in each, the best query heads."""
    (heads, kv_heads), (small_heads, small_kv) = group.big, group.small
    rep_big, rep_small = heads // kv_heads, small_heads // small_kv
    per_head, per_group = _head_scores(group, channel_scores)
    group.keep = []
    for g in top_indices(per_group, small_kv):
        members = list(range(g * rep_big, (g + 1) * rep_big))
        chosen = top_indices([per_head[h] for h in members], rep_small)
        group.keep.append((g, [members[i] for i in chosen]))


def choose_channels(group, scores):
    group.keep = top_indices(scores, group.small)


def choose_first(layout):
    """The original's choice expressed on groups: the first units (used where a score is missing)."""
    for group in layout.groups():
        if isinstance(group, HeadsGroup):
            (heads, kv_heads), (small_heads, small_kv) = group.big, group.small
            rep_big, rep_small = heads // kv_heads, small_heads // small_kv
            group.keep = [(g, list(range(g * rep_big, g * rep_big + rep_small))) for g in range(small_kv)]
        else:
            group.keep = list(range(group.small))


def apply_scores(layout, channel_scores):
    """Choose every changing group's units from ``channel_scores`` (``{(id(group), view): tensor}``)."""
    choose_first(layout)
    for group in layout.groups():
        if not group.changes:
            continue
        if isinstance(group, HeadsGroup):
            if (id(group), Q) in channel_scores or (id(group), KV) in channel_scores:
                choose_heads(group, channel_scores)
            else:
                logger.warning("No importance for %s: keeping its first heads.", group.name)
        else:
            view = FFN if group.name != "hidden" else HIDDEN
            scores = channel_scores.get((id(group), view))
            if scores is not None and len(scores) == group.big:
                choose_channels(group, scores)
            else:
                logger.warning("No importance for %s: keeping its first %d channels.", group.name, group.small)


# ----------------------------------------------------------------------------------------------------- activations
class ActivationStats(activation_importance.ActivationStats):
    """Mean |x| per channel at the inputs of Linear/Conv1D layers and the outputs of normalisation layers,
    accumulated as float32 torch tensors on the CPU."""

    def add(self, key, value):
        if value is None or not torch.is_floating_point(value):
            return
        if value.numel() == 0:
            self.empty += 1
            return
        flat = value.detach().float().abs().reshape(-1, value.shape[-1])
        self.sums[key] = self.sums.get(key, 0) + flat.sum(0).cpu()
        self.counts[key] = self.counts.get(key, 0) + flat.shape[0]


def check_samples(dataset, what="activation importance"):
    """Raise ``ValueError`` naming the first batch of ``dataset`` whose first tensor has no element (0 samples)."""
    for index, batch in enumerate(dataset):
        tensor = first_tensor((batch.args, batch.kwargs) if isinstance(batch, CallParams) else batch)
        if tensor is not None and tensor.numel() == 0:
            raise ValueError(f"{what} needs at least one sample: dataset[{index}] is empty "
                             f"(shape {tuple(tensor.shape)}).")


def collect_activation_stats(model, dataset):
    """Run ``dataset`` through ``model`` block by block (a whole pass when it has no repeated blocks) and
    return its :class:`ActivationStats`, keyed ``(module name, "in" | "out")``.

    Raises:
        ValueError: the batches hold no sample; RuntimeError (naming the batch) when the model fails on one.
    """
    check_samples(dataset)
    stats = ActivationStats()
    watched = []
    for name, module in model.named_modules():
        spec = layer_spec(module)
        if spec is not None and spec.kind in ("linear", "conv1d"):
            watched.append((name, module, "in"))
        elif spec is not None and spec.kind in ("norm", "layernorm"):
            watched.append((name, module, "out"))
    kinds = {name: where for name, _, where in watched}

    def record(name, module, inputs, output):
        where = kinds[name]
        stats.add((name, where), first_tensor(inputs) if where == "in" else first_tensor(output))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), hooks([(n, m) for n, m, _ in watched], record):
            blocks = find_blocks(model)
            if blocks:
                for step in iterate_blocks(model, blocks, dataset, progress="activation importance"):
                    step.run()
            else:
                for index, batch in enumerate(dataset):
                    run(model, batch, f"dataset[{index}]")
    finally:
        model.train(was_training)
    if stats.empty and not stats.sums:
        raise ValueError("activation importance needs at least one sample: every calibration batch gave empty "
                         "activations (batches of 0 samples or 0 tokens?).")
    return stats


def activation_scores(layout, source_of, stats):
    """Per group and view, per-channel scores from activation statistics of the big model.

    ``source_of(key)`` is the checkpoint key a small-model key comes from.
    """
    scores = {}
    for (key, axis), (group, view, role) in layout.axes.items():
        # the down projection's input (FFN) and the output projection's input (Q) carry the activations
        if not group.changes or (id(group), view) in scores or view not in (FFN, Q) or role != INPUT:
            continue
        if not key.endswith(".weight"):
            continue
        module = source_of(key)[: -len(".weight")]
        value = activation_importance.resolve(stats, module, "in")
        if value is None:
            continue
        expected = group.big if view == FFN else group.big[0] * group.head_dim
        if len(value) == expected:
            scores[(id(group), view)] = value
    norms = [stats.mean(k) for k in stats.keys() if k[1] == "out"]
    norms = [n / n.mean() for n in norms if n is not None and len(n) == layout.hidden.big and n.mean() > 0]
    if norms and layout.hidden.changes:
        scores[(id(layout.hidden), HIDDEN)] = torch.stack(norms).mean(0)
    return scores

