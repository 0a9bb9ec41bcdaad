"""Helpers of the sparse-tool sweep tests: tiny models, fault injection, exact snapshots, safetensors surgery."""
import contextlib
import json
import logging
import struct

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig


class Fault:
    """Raise ``error`` on the ``at``-th call (1-based); record whether ``probe()`` was true at that moment."""

    def __init__(self, at, error=None, probe=None):
        self.at, self.error, self.probe = at, error, probe
        self.calls = 0
        self.fired = False
        self.probe_at_fault = None

    def __call__(self):
        self.calls += 1
        if self.error is not None and self.calls == self.at:
            self.fired = True
            self.probe_at_fault = bool(self.probe()) if self.probe else None
            raise self.error


class Tied(nn.Module):
    """The sweep's F-3 model: ``a`` and ``b`` share one weight; ``c`` is calibrated last."""

    def __init__(self, fault=None):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(32, 32, bias=False)
        self.b = nn.Linear(32, 32, bias=False)
        self.b.weight = self.a.weight
        self.c = nn.Linear(32, 8)
        self.fault = fault

    def forward(self, x):
        if self.fault is not None:
            self.fault()
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class Chain(nn.Module):
    """Three Linear layers in a row (no repeated blocks: calibrated layer by layer)."""

    def __init__(self, fault=None, widths=(32, 32, 32, 8)):
        super().__init__()
        torch.manual_seed(0)
        self.l1 = nn.Linear(widths[0], widths[1])
        self.l2 = nn.Linear(widths[1], widths[2])
        self.l3 = nn.Linear(widths[2], widths[3])
        self.fault = fault

    def forward(self, x):
        if self.fault is not None:
            self.fault()
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))


def batches(count=4, width=32, rows=8):
    torch.manual_seed(1)
    return [torch.randn(rows, width) for _ in range(count)]


def count_calls(make_model, config, data):
    """How many forward calls a clean ``compress`` makes (to place a fault on a chosen call)."""
    fault = Fault(at=None)
    Compressor(make_model(fault), config).compress(data)
    return fault.calls


def tiny_llama(tie_gate_up=False):
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64)
    model = T.LlamaForCausalLM(cfg).eval()
    if tie_gate_up:
        mlp = model.model.layers[0].mlp
        mlp.up_proj.weight = mlp.gate_proj.weight
    return model


def llama_batches(count=3, vocab=128):
    torch.manual_seed(2)
    return [{"input_ids": torch.randint(0, vocab, (1, 12))} for _ in range(count)]


def fail_module_on_call(module, call, probe=None):
    """Make ``module``'s forward raise RuntimeError on its ``call``-th call (the sweep's fault injection); the
    returned dict records ``probe()`` at that moment under ``probe_at_fault``."""
    original = module.forward
    state = {"calls": 0, "probe_at_fault": None}

    def forward(*args, **kwargs):
        state["calls"] += 1
        if state["calls"] == call:
            state["probe_at_fault"] = bool(probe()) if probe else None
            raise RuntimeError(f"injected fault on call {call}")
        return original(*args, **kwargs)

    module.forward = forward
    return state


def same_bits(a, b):
    """Bitwise equality (NaN-aware), dtype and shape included."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.detach().contiguous().reshape(-1).view(torch.uint8),
                       b.detach().contiguous().reshape(-1).view(torch.uint8))


def snapshot(model):
    """Copies of every state-dict tensor and the identity of every parameter (shared ones under each name)."""
    return ({k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
            {name: id(p) for name, p in model.named_parameters(remove_duplicate=False)})


def assert_identical(model, snap):
    """Every tensor bit-identical to the snapshot, and the same Parameter objects."""
    values, ids = snap
    now = model.state_dict(keep_vars=True)
    assert set(now) == set(values)
    changed = [k for k, v in values.items() if not same_bits(now[k], v)]
    assert not changed, f"changed after the error: {changed}"
    assert {name: id(p) for name, p in model.named_parameters(remove_duplicate=False)} == ids


@contextlib.contextmanager
def captured_log(caplog):
    """The msmodelslim logger does not propagate; attach pytest's handler to it."""
    log = logging.getLogger("msmodelslim")
    log.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        log.removeHandler(caplog.handler)


# ------------------------------------------------------------------------------------------- sparse files
class OddWidths(nn.Module):
    """Widths that are not multiples of 8 (padding bits in the bitmask) and a tied pair of layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(20, 13)
        self.b = nn.Linear(13, 13, bias=False)
        self.c = nn.Linear(13, 13, bias=False)
        self.c.weight = self.b.weight
        self.head = nn.Linear(13, 3)

    def forward(self, x):
        return self.head(self.c(torch.relu(self.b(torch.relu(self.a(x))))))


def export_small(path):
    """Sparsify :class:`OddWidths` and export it to ``path``; returns the expected ``load_sparse`` result."""
    model = OddWidths()
    compressor = Compressor(model, SparseConfig(method="weight_magnitude"))
    compressor.compress([torch.randn(4, 20)])
    compressor.export(path)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def read_raw(path):
    """``(tensors, metadata)`` of a safetensors file, as stored."""
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})


def rewrite(src, dst, tensors=None, meta=None, keep_checksums=True):
    """Copy a safetensors file with ``tensors(dict)`` / ``meta(dict)`` applied (in place) to its contents."""
    raw, metadata = read_raw(src)
    if tensors:
        tensors(raw)
    if meta:
        meta(metadata)
    if not keep_checksums:
        metadata.pop("checksums", None)
    save_file(raw, str(dst), metadata=metadata)
    return dst


def split_file(blob):
    """``(header dict, data bytes)`` of the bytes of a safetensors file."""
    (size,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + size]), blob[8 + size:]


def join_file(header, data):
    """The bytes of a safetensors file from its header dict and data."""
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data
