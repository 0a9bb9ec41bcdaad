"""Run a 2:4-sparse model's Linear layers on the GPU's sparse tensor cores.

PyTorch's semi-structured sparse tensors (``torch.sparse.to_sparse_semi_structured``) store a 2:4 weight in half
its size plus metadata and multiply it with cuSPARSELt or CUTLASS kernels. They exist only on CUDA devices of
compute capability 8.0 or more (Ampere, Hopper), for float16 / bfloat16 weights whose two dimensions are multiples
of the backend's tile, and they pay off only for some shapes and token counts: ``benchmarks/results/gpu.md``
measures where. Elsewhere a 2:4 model gives a smaller file, not a faster forward.
"""
from dataclasses import dataclass, field

import torch
from torch import nn

from msmodelslim.utils.logging import logger

BACKENDS = ("cusparselt", "cutlass")
MIN_CAPABILITY = (8, 0)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class SemiStructuredReport:
    """What :func:`to_semi_structured` did: ``converted`` layer names, ``skipped`` {name: reason}, the backend."""
    backend: str
    converted: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)


def is_two_four(weight):
    """Whether every group of 4 consecutive weights along each row holds at least 2 zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1) >= 2).all())


def default_backend():
    """``"cusparselt"`` where PyTorch was built with it, else ``"cutlass"``."""
    available = getattr(torch.backends, "cusparselt", None)
    return "cusparselt" if available is not None and available.is_available() else "cutlass"


def _tensor_class(backend):
    if backend == "cusparselt":
        return torch.sparse.SparseSemiStructuredTensorCUSPARSELT
    return torch.sparse.SparseSemiStructuredTensorCUTLASS


def _why_not(weight):
    """Why ``weight`` cannot become a semi-structured tensor, or None."""
    if weight.device.type != "cuda":
        return f"on {weight.device} (a CUDA device is needed)"
    capability = torch.cuda.get_device_capability(weight.device)
    if capability < MIN_CAPABILITY:
        return f"CUDA capability {capability[0]}.{capability[1]} (8.0 or more is needed)"
    if weight.dtype not in SUPPORTED_DTYPES:
        return f"weight dtype {weight.dtype} (float16 or bfloat16 needed)"
    if not is_two_four(weight):
        return "the weight is not 2:4 sparse"
    return None


_probed = {}


def _backend_problem(tensor_class, device, dtype):
    """Why the backend's kernels do not run here (e.g. PyTorch's CUTLASS kernels are built for capability 8.x
    only), found once per device and dtype by multiplying a small 2:4 matrix; None when they run."""
    key = (tensor_class, device, dtype)
    if key not in _probed:
        weight = torch.tensor([1.0, 1.0, 0.0, 0.0], device=device, dtype=dtype).repeat(128, 32)
        try:
            torch.nn.functional.linear(torch.ones(32, 128, device=device, dtype=dtype), tensor_class.from_dense(weight))
            torch.cuda.synchronize(device)
            _probed[key] = None
        except RuntimeError as error:
            _probed[key] = f"the backend does not run here: {str(error).splitlines()[0]}"
    return _probed[key]


def to_semi_structured(model, backend=None, skip=()):
    """Replace, in place, the weight of every 2:4-sparse ``nn.Linear`` of ``model`` by a semi-structured sparse
    tensor, for inference. Layers that cannot be converted (not on CUDA, capability < 8.0, dtype not
    float16/bfloat16, not 2:4, a shape the backend's kernels do not take, a backend whose kernels do not run on this
    GPU) are left dense and listed with the reason.

    Args:
        model: a ``torch.nn.Module``, typically after ``Compressor`` with ``pattern="2:4"``.
        backend: ``"cusparselt"`` or ``"cutlass"``; default cuSPARSELt where available.
        skip: names of Linear layers to leave dense (e.g. the LM head).

    Returns:
        SemiStructuredReport.

    Raises:
        TypeError: ``model`` is not a Module.
        ValueError: ``backend`` is not one of ``"cusparselt"``, ``"cutlass"``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    backend = default_backend() if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    report = SemiStructuredReport(backend=backend)
    tensor_class, skip = _tensor_class(backend), set(skip)
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name in skip:
            continue
        reason = _why_not(module.weight)
        if reason is None:
            reason = _backend_problem(tensor_class, module.weight.device, module.weight.dtype)
        if reason is None:
            try:
                sparse = tensor_class.from_dense(module.weight.detach().contiguous())
            except RuntimeError as error:  # shape or build limits of the backend, in its own words
                reason = str(error).splitlines()[0]
            else:
                module.weight = nn.Parameter(sparse, requires_grad=False)
                report.converted.append(name)
                continue
        report.skipped[name] = reason
    logger.info("semi-structured (%s): %d Linear layers converted, %d left dense", backend, len(report.converted),
                len(report.skipped))
    return report
