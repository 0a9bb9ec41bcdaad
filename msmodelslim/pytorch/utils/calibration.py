"""Feeding sample or calibration data to a model, and capturing what flows through its layers.

One convention everywhere: a ``Tensor`` is fed as ``model(x)``, a ``list``/``tuple`` as ``model(*x)``, a ``dict`` as
``model(**x)`` (a Hugging Face batch), and a :class:`CallParams` as ``model(*args, **kwargs)``. Every data-driven
method of the toolkit gets its layer inputs and outputs through the hooks of this module.
"""
import contextlib

import torch


class CallParams:
    """Positional and keyword arguments of one model call: ``CallParams(x, attention_mask=m)``."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs

    def __call__(self, fn):
        """Call ``fn(*args, **kwargs)``."""
        return fn(*self.args, **self.kwargs)

    def to(self, device):
        """A copy with every tensor moved to ``device``."""
        return CallParams(*move_to_device(self.args, device), **move_to_device(self.kwargs, device))

    def __repr__(self):
        return f"CallParams(args={len(self.args)}, kwargs={sorted(self.kwargs)})"


def as_call_params(batch, where="inputs"):
    """Turn one batch into :class:`CallParams` by the convention of this module.

    Raises:
        TypeError: ``batch`` is not a Tensor, list, tuple, dict or CallParams; ``where`` names it in the message.
    """
    if isinstance(batch, CallParams):
        return batch
    if isinstance(batch, torch.Tensor):
        return CallParams(batch)
    if isinstance(batch, (list, tuple)):
        return CallParams(*batch)
    if isinstance(batch, dict):
        return CallParams(**batch)
    raise TypeError(f"{where} must be a Tensor, list, tuple, dict or CallParams, not {type(batch).__name__}.")


def move_to_device(obj, device):
    """``obj`` with every tensor inside (nested lists, tuples, dicts) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, CallParams):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(item, device) for item in obj)
    if isinstance(obj, dict):
        return {key: move_to_device(value, device) for key, value in obj.items()}
    return obj


def model_device(model):
    """The device of the model's first parameter or buffer (CPU for a model without tensors)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def run(model, batch, where="inputs"):
    """Call ``model`` on one batch (moved to the model's device) and return its output."""
    return as_call_params(batch, where).to(model_device(model))(model)


@contextlib.contextmanager
def eval_mode(model):
    """Put ``model`` in eval mode for the block, then restore each submodule's own train/eval flag."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def output_tensors(output):
    """The tensors of a model output (tuples, lists, dicts and Hugging Face outputs), caches left out."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in output_tensors(item)]
    return []


def first_tensor(value):
    """The first tensor in a module input/output (a tensor, or a tuple/list/dict holding one), else None."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        for item in value.values():
            found = first_tensor(item)
            if found is not None:
                return found
    return None


@contextlib.contextmanager
def hooks(modules, on_forward, with_inputs=True, before=False):
    """Register ``on_forward(name, module, inputs, output)`` as a forward hook on each ``(name, module)``; with
    ``before``, as a forward pre-hook instead: called before the module runs, with ``output`` None.

    The hooks are removed when the block exits, also on error.
    """
    handles = []
    try:
        for name, module in modules:
            def hook(mod, inputs, output=None, _name=name):  # a pre-hook is called without the output
                on_forward(_name, mod, inputs if with_inputs else None, output)

            register = module.register_forward_pre_hook if before else module.register_forward_hook
            handles.append(register(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()

