"""Measurements of a model for pruning: layer execution order, call counts and multiply-accumulates."""
import math

import torch

from msmodelslim.pytorch.prune.layers import layer_spec
from msmodelslim.pytorch.utils.calibration import eval_mode, first_tensor, hooks, output_tensors

WEIGHTED_KINDS = ("linear", "conv", "conv1d", "depthwise_conv")


def _macs(module, spec_kind, output):
    if output is None:
        return 0
    if spec_kind in ("conv", "depthwise_conv"):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return output.numel() * per_output
    if spec_kind == "linear":
        return output.numel() * module.in_features
    if spec_kind == "conv1d":
        return output.numel() * module.weight.shape[0]
    return 0


def profile(model, call):
    """Run ``call(model)`` once (eval mode, no grad) and return ``(order, calls, macs, shapes)``.

    ``order`` lists the Linear/Conv/Conv1D layers in first-execution order, ``calls`` counts calls per layer,
    ``macs`` maps each of them to its multiply-accumulates in that forward pass, and ``shapes`` are the shapes of
    the main output tensors (see :func:`_main_outputs`).
    """
    kinds = {}
    for name, module in model.named_modules():
        spec = layer_spec(module)
        if spec is not None and spec.kind in WEIGHTED_KINDS:
            kinds[name] = spec.kind
    order, calls, macs = [], {}, {}

    def record(name, module, inputs, output):
        if name not in calls:
            order.append(name)
        calls[name] = calls.get(name, 0) + 1
        macs[name] = macs.get(name, 0) + _macs(module, kinds[name], first_tensor(output))

    with eval_mode(model), torch.no_grad(), hooks([(n, model.get_submodule(n)) for n in kinds], record):
        output = call(model)
    return order, calls, macs, [tuple(t.shape) for t in _main_outputs(output)]


def _main_outputs(output):
    """The output tensors whose shapes pruning keeps: every tensor of a plain output; of a Hugging Face
    ``ModelOutput`` only the first (``logits``, or ``last_hidden_state`` of a headless model), since the hidden
    states that come with it (an encoder-decoder's ``encoder_last_hidden_state``) are the residual stream."""
    tensors = output_tensors(output)
    if callable(getattr(output, "to_tuple", None)) and tensors:
        return tensors[:1]
    return tensors


def count_params(model):
    """Number of (unique) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
