"""Block-by-block calibration for models made of repeated blocks (decoders, encoders).

The calibration batches are run through the model only up to its first block, whose inputs (positional and
keyword: hidden states, attention masks, position embeddings ...) are captured. Then, block after block, the
caller sees each block with its inputs, may measure or modify the block, and the block's outputs (computed after
the caller is done, so with any modified weights) become the next block's inputs. Memory holds the model's
weights plus the activations of one block for all calibration batches, as in SparseGPT and Wanda.
"""
import contextlib

import torch
from torch import nn
from tqdm.auto import tqdm

from msmodelslim.errors import ModelslimError
from msmodelslim.pytorch.utils.calibration import CallParams, as_call_params, first_tensor, model_device
from msmodelslim.utils.logging import logger


class _Captured(Exception):
    """Raised from the first block's pre-hook to stop the forward pass once its inputs are captured."""


class BlockDone(Exception):
    """Raised by a hook during :meth:`BlockStep.run` with a ``stopper``: everything wanted from the current batch has
    been seen, so the rest of the block's forward on it is skipped."""


class StopAfterFirstBatchCalls:
    """A ``stopper`` for :meth:`BlockStep.run` that ends each batch's forward once the watched layers have been called
    exactly as on the first batch - the same layers, in the same order - if that batch called every one of them.
    Only the rest of the block is skipped (e.g. its last layer's own product): the watched layers have seen all
    they would see, unless a later batch would call one of them more often than the first did. The first batch
    always runs to the end. Hooks report each call with :meth:`called`."""

    def __init__(self, watched):
        self.watched = set(watched)
        self.reference = None  # the first batch's calls; () when it did not call every watched layer
        self.calls = []

    def start(self):
        if self.reference is None and self.calls:
            self.reference = tuple(self.calls) if self.watched <= set(self.calls) else ()
        self.calls = []

    def called(self, name):
        """Record a call of layer ``name``.

        Raises:
            BlockDone: the calls of this batch now equal the first batch's.
        """
        self.calls.append(name)
        if self.reference and len(self.calls) == len(self.reference) and tuple(self.calls) == self.reference:
            raise BlockDone()


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


CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value", "layer_past")


def _is_cache(value):
    return hasattr(value, "update") and hasattr(value, "get_seq_length")


def _sanitise(kwargs):
    """No key/value caches while calibrating: a block may be called several times on the same inputs, and a cache
    would grow with every call."""
    kwargs = dict(kwargs)
    for key, value in kwargs.items():
        if key in CACHE_ARGUMENTS or _is_cache(value):
            kwargs[key] = None
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return kwargs


def capture_block_inputs(model, block, batches, where="dataset", device=None):
    """Run each batch until ``block`` is called; return its ``(args, kwargs)`` per batch.

    Raises:
        RuntimeError: a batch never reaches the block; the message names the batch index.
    """
    captured = []

    def pre_hook(module, args, kwargs):
        captured.append((args, _sanitise(kwargs)))
        raise _Captured()

    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    device = device or model_device(model)
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches):
                before = len(captured)
                try:
                    as_call_params(batch, f"{where}[{index}]").to(device)(model)
                except _Captured:
                    pass
                except ModelslimError:
                    raise
                except Exception as exc:
                    raise RuntimeError(f"{where}[{index}]: the model failed on this batch ({type(exc).__name__}: "
                                       f"{exc})") from exc
                if len(captured) == before:
                    raise RuntimeError(f"{where}[{index}]: the model never called its first block.")
    finally:
        handle.remove()
    return captured


def block_hidden(args, kwargs):
    """The hidden states a block is called with: its first positional argument, else ``hidden_states``."""
    return args[0] if args else kwargs.get("hidden_states")


def _with_hidden(args, kwargs, hidden):
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = hidden
    return args, kwargs


def blocks_chain(model, blocks, batch):
    """Whether each block's output is exactly the next block's input on ``batch`` (nothing runs between them),
    so that running the blocks one after another reproduces the model. Checked on the batch's first sample when its
    tensors can be cut to one (the whole batch if the model fails on that), and only up to the last block's input:
    what follows (that block, the head) cannot change the answer. A batch the model fails on counts as chaining
    (the calibration itself reports the failure, naming the batch)."""
    call = as_call_params(batch)
    sample = _first_sample(call)
    verdict = _chain_verdict(model, blocks, sample) if sample is not None else None
    if verdict is None:
        verdict = _chain_verdict(model, blocks, call)
    return True if verdict is None else verdict


def _first_sample(call):
    """``call`` cut to its first sample, when its arguments are tensors sharing one leading size above 1 (and other
    values holding no tensor); else None."""
    values = list(call.args) + list(call.kwargs.values())
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if not tensors or any(first_tensor(v) is not None for v in values if not isinstance(v, torch.Tensor)):
        return None
    sizes = {t.shape[0] if t.dim() else 0 for t in tensors}
    if len(sizes) != 1 or sizes.pop() < 2:
        return None

    def cut(value):
        return value[:1] if isinstance(value, torch.Tensor) else value

    return CallParams(*[cut(a) for a in call.args], **{k: cut(v) for k, v in call.kwargs.items()})


def _chain_verdict(model, blocks, call):
    """:func:`blocks_chain` on one call; None when the model fails on it."""
    seen_in, seen_out = {}, {}
    handles = []
    for index, (_, block) in enumerate(blocks):
        def pre(module, args, kwargs, _i=index):
            seen_in.setdefault(_i, block_hidden(args, kwargs))
            if _i == len(blocks) - 1:
                raise _Captured()

        def post(module, args, output, _i=index):
            seen_out.setdefault(_i, first_tensor(output))

        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post))
    try:
        with torch.no_grad():
            call.to(model_device(model))(model)
    except _Captured:
        pass
    except Exception:  # the model fails on this call
        return None
    finally:
        for handle in handles:
            handle.remove()
    for index in range(len(blocks) - 1):
        out, nxt = seen_out.get(index), seen_in.get(index + 1)
        if out is None or nxt is None or out.shape != nxt.shape or not torch.equal(out, nxt):
            return False
    return True


class BlockStep:
    """One block during :func:`iterate_blocks`: its ``name``, ``module``, ``inputs`` and, once run, ``outputs``."""

    def __init__(self, index, name, module, inputs, where="dataset"):
        self.index = index
        self.name = name
        self.module = module
        self.inputs = inputs
        self.where = where
        self.outputs = None
        self.returns_tuple = False  # whether the block returned a tuple (hidden states first), once run

    def run(self, keep=True, stopper=None):
        """Run the block on every input (no grad); keep the outputs for the next block when ``keep``.

        ``stopper``: its ``start()`` is called before each batch, and hooks may then raise :class:`BlockDone` to end
        that batch's forward early; such a run only serves its hooks and returns None.

        Raises:
            RuntimeError: the block fails on a batch (named by its index).
        """
        outputs = []
        with torch.no_grad():
            for index, (args, kwargs) in enumerate(self.inputs):
                if stopper is not None:
                    stopper.start()
                try:
                    output = self.module(*args, **kwargs)
                    self.returns_tuple = isinstance(output, tuple)
                    outputs.append(first_tensor(output))
                except BlockDone:
                    if stopper is None:
                        raise
                except ModelslimError:
                    raise
                except Exception as exc:
                    raise RuntimeError(f"{self.where}[{index}]: block '{self.name}' failed on this batch "
                                       f"({type(exc).__name__}: {exc})") from exc
        if stopper is not None:
            return None
        if keep:
            self.outputs = outputs
        return outputs


def iterate_blocks(model, blocks, batches, where="dataset", progress="blocks", around=None, device=None):
    """Yield a :class:`BlockStep` per block, in order; see the module docstring.

    When the caller resumes the iteration, the block's outputs are computed (unless ``step.run()`` kept them) and
    become the next block's inputs. A tqdm bar named ``progress`` follows the blocks. ``around(name, block)``, a
    context manager factory, encloses each block's whole turn (e.g. loading its weights, then writing and freeing
    them); ``device`` is where the batches go (default: the model's device).
    """
    if not blocks:
        raise ValueError("The model has no repeated blocks to calibrate block by block.")
    inputs = capture_block_inputs(model, blocks[0][1], batches, where, device)
    disable = not logger.isEnabledFor(20)  # the bar follows the msmodelslim logger: hidden above INFO
    for index, (name, block) in enumerate(tqdm(blocks, desc=progress, disable=disable)):
        with around(name, block) if around else contextlib.nullcontext():
            step = BlockStep(index, name, block, inputs, where)
            yield step
            outputs = step.outputs if step.outputs is not None else step.run(keep=False)
        inputs = [_with_hidden(args, kwargs, hidden) for (args, kwargs), hidden in zip(inputs, outputs)]
