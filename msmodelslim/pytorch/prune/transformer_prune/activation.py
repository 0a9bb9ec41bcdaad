"""Activation statistics of the big model for ``prune_model_weight``'s activation importance (Minitron,
Muralidharan et al. 2024): mean |x| per channel at the inputs of Linear/Conv1D layers and the outputs of
normalisation layers, on calibration data run block by block. The choice rule itself is the framework-free one of
:mod:`msmodelslim.common.prune.transformer_prune.activation_importance`.
"""
import torch

from msmodelslim.common.prune.transformer_prune import activation_importance
from msmodelslim.pytorch.prune.layers import layer_spec
from msmodelslim.pytorch.utils.calibration import CallParams, first_tensor, hooks, run
from msmodelslim.pytorch.utils.sequential import find_blocks, iterate_blocks


class ActivationStats(activation_importance.ActivationStats):
    """Mean |x| per channel at the inputs of Linear/Conv1D layers and the outputs of normalisation layers: each
    activation is reduced in torch on its device, the per-channel sums are kept in float64 NumPy for the
    framework-free choice rule."""

    def add(self, key, value):
        if value is None or not torch.is_floating_point(value):
            return
        if value.numel() == 0:
            self.empty += 1
            return
        flat = value.detach().abs().reshape(-1, value.shape[-1])
        self.sums[key] = self.sums.get(key, 0) + flat.sum(0, dtype=torch.float64).cpu().numpy()
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
