"""Block-by-block calibration for models made of repeated blocks (decoders, encoders).

The calibration batches are run through the model only up to its first block, whose inputs (positional and
keyword: hidden states, attention masks, position embeddings ...) are captured. Then, block after block, the
caller sees each block with its inputs, may measure or modify the block, and the block's outputs (computed after
the caller is done, so with any modified weights) become the next block's inputs. Memory holds the model's
weights plus the activations of one block for all calibration batches, as in SparseGPT and Wanda.
"""
import torch
from torch import nn
from tqdm.auto import tqdm

from msmodelslim.utils.calibration import as_call_params, first_tensor, model_device
from msmodelslim.utils.logging import logger


class _Captured(Exception):
    """Raised from the first block's pre-hook to stop the forward pass once its inputs are captured."""


def find_blocks(model):
    """The repeated blocks of ``model`` as ``[(name, module)]``, or ``[]`` when it has none.

    A recognised transformer family gives its layers; otherwise the ``nn.ModuleList`` of two or more modules
    holding the most parameters is taken.
    """
    from msmodelslim.pytorch.prune.structure import detect_family

    _, layers = detect_family(model)
    if layers:
        return [(prefix[:-1], model.get_submodule(prefix[:-1])) for prefix in layers]
    best, best_params = [], 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2:
            params = sum(p.numel() for p in module.parameters())
            if params > best_params:
                best, best_params = [(f"{name}.{i}" if name else str(i), m) for i, m in enumerate(module)], params
    return best


def _sanitise(kwargs):
    """No key/value caches while calibrating: every block is called once per batch, out of the model's loop."""
    kwargs = dict(kwargs)
    for key in ("past_key_values", "past_key_value", "layer_past"):
        if key in kwargs:
            kwargs[key] = None
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return kwargs


def capture_block_inputs(model, block, batches, where="dataset"):
    """Run each batch until ``block`` is called; return its ``(args, kwargs)`` per batch.

    Raises:
        RuntimeError: a batch never reaches the block; the message names the batch index.
    """
    captured = []

    def pre_hook(module, args, kwargs):
        captured.append((args, _sanitise(kwargs)))
        raise _Captured()

    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    device = model_device(model)
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches):
                before = len(captured)
                try:
                    as_call_params(batch, f"{where}[{index}]").to(device)(model)
                except _Captured:
                    pass
                except Exception as exc:
                    raise RuntimeError(f"{where}[{index}]: the model failed on this batch ({type(exc).__name__}: "
                                       f"{exc})") from exc
                if len(captured) == before:
                    raise RuntimeError(f"{where}[{index}]: the model never called its first block.")
    finally:
        handle.remove()
    return captured


def _with_hidden(args, kwargs, hidden):
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = hidden
    return args, kwargs


class BlockStep:
    """One block during :func:`iterate_blocks`: its ``name``, ``module``, ``inputs`` and, once run, ``outputs``."""

    def __init__(self, index, name, module, inputs):
        self.index = index
        self.name = name
        self.module = module
        self.inputs = inputs
        self.outputs = None

    def run(self, keep=True):
        """Run the block on every input (no grad); keep the outputs for the next block when ``keep``."""
        outputs = []
        with torch.no_grad():
            for args, kwargs in self.inputs:
                outputs.append(first_tensor(self.module(*args, **kwargs)))
        if keep:
            self.outputs = outputs
        return outputs


def iterate_blocks(model, blocks, batches, where="dataset", progress="blocks"):
    """Yield a :class:`BlockStep` per block, in order; see the module docstring.

    When the caller resumes the iteration, the block's outputs are computed (unless ``step.run()`` kept them) and
    become the next block's inputs. A tqdm bar named ``progress`` follows the blocks.
    """
    if not blocks:
        raise ValueError("The model has no repeated blocks to calibrate block by block.")
    inputs = capture_block_inputs(model, blocks[0][1], batches, where)
    disable = not logger.isEnabledFor(20)  # the bar follows the msmodelslim logger: hidden above INFO
    for index, (name, block) in enumerate(tqdm(blocks, desc=progress, disable=disable)):
        step = BlockStep(index, name, block, inputs)
        yield step
        outputs = step.outputs if step.outputs is not None else step.run(keep=False)
        inputs = [_with_hidden(args, kwargs, hidden) for (args, kwargs), hidden in zip(inputs, outputs)]
