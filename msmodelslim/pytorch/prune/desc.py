"""The ``desc``: a JSON-serialisable, self-contained record of a structured pruning, and its application.

Format (version 1)::

    {
      "<module name>": {"output": [kept, "--x-..."], "input": [kept, "-x--..."]},   # one entry per changed layer
      ...,
      "__meta__": {
        "format": "msmodelslim-prune-desc", "version": 1,
        "engine": "torch-pruning" | "structure:<family>",
        "fingerprint": "<sha256 of the base model's parameter and buffer names and shapes>",
        "parameters": {"before": int, "after": int},
        "patches": {"<module name>": {"<attribute>": int}},   # attributes forward() reads (num_heads ...)
        "config": {"<config field>": int},                     # Hugging Face config fields, when uniform
        "axes": {"<parameter name>": int}                      # axis of entries that are bare parameters
      }
    }

Each mask has one character per channel of the *original* layer: ``-`` kept, anything else removed; ``kept`` is the
number of ``-``. Normalisation and other per-channel layers use ``"input"`` (as in the original msModelSlim); a
desc written by the original for a plain Conv/Linear model applies as is (it simply has no ``__meta__``).
Applying a desc slices every listed layer directly - no tracing - after validating all of it; on any error the
model is restored exactly.
"""
import hashlib
import re

import torch

from msmodelslim.pytorch.prune.layers import INPUT, OUTPUT, slice_tensor, spec_of
from msmodelslim.utils.logging import logger

META_KEY = "__meta__"
FORMAT = "msmodelslim-prune-desc"
VERSION = 1
KEPT, REMOVED = "-", "x"
BELONGS = "Please Check whether desc belongs to the network."
_ALLOWED = re.compile(r"""^[_A-Za-z0-9"'><=\[\])(,}{: /.*~-]*$""")
MAX_KEY_LENGTH = 512


def fingerprint(model):
    """sha256 of the names and shapes of the model's parameters and buffers."""
    digest = hashlib.sha256()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
    return digest.hexdigest()


def mask_string(size, removed):
    chars = [KEPT] * size
    for index in removed:
        chars[index] = REMOVED
    return "".join(chars)


def build_desc(model, groups, removed_units, engine, patches=None, config=None, params=None):
    """The desc of removing ``removed_units[g]`` from each group ``groups[g]`` of ``model``."""
    removed = {}
    axes = {}
    for g, units in removed_units.items():
        for member in groups[g].members:
            idxs = member.indices_of_units(units)
            if not idxs:
                continue
            removed.setdefault(member.target, {}).setdefault(member.role, set()).update(idxs)
            if member.axis is not None:
                axes[member.target] = member.axis
    desc = {}
    for target, roles in removed.items():
        spec = spec_of(model, target, axes.get(target))
        entry = {}
        for role, idxs in roles.items():
            size = spec.size(role)
            entry[role] = [size - len(idxs), mask_string(size, idxs)]
        desc[target] = entry
    desc[META_KEY] = {"format": FORMAT, "version": VERSION, "engine": engine, "fingerprint": fingerprint(model),
                      "parameters": dict(params or {}), "patches": patches or {}, "config": config or {},
                      "axes": axes}
    return desc


def _check_strings(obj):
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not _ALLOWED.match(key):
                raise ValueError("desc contains invalid characters.")
            _check_strings(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _check_strings(value)
    elif isinstance(obj, str) and not _ALLOWED.match(obj):
        raise ValueError("desc contains invalid characters.")


def _bad(target, why):
    return ValueError(f"{BELONGS} Module '{target}': {why}.")


def _keep_index(target, role, entry, size):
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], int)
            and not isinstance(entry[0], bool) and isinstance(entry[1], str)):
        raise _bad(target, f"'{role}' must be [kept_count, mask], got {entry!r}"[:300])
    kept, mask = entry
    if len(mask) != size:
        raise _bad(target, f"the '{role}' mask has {len(mask)} channels, the layer has {size}")
    index = [i for i, ch in enumerate(mask) if ch == KEPT]
    if len(index) != kept:
        raise _bad(target, f"'{role}' says {kept} channels are kept, its mask keeps {len(index)}")
    if kept < 1:
        raise _bad(target, f"'{role}' keeps no channel")
    return torch.as_tensor(index, dtype=torch.long)


def parse_desc(model, desc):
    """Validate ``desc`` against ``model`` and return ``(operations, meta)`` without touching the model.

    ``operations`` is a list of ``(spec, {role: kept index tensor})``.

    Raises:
        TypeError: ``desc`` is not a dict.
        ValueError: invalid characters, a model without parameters, or an entry that does not fit the model
            (the message names the first mismatching module).
    """
    if not isinstance(desc, dict):
        raise TypeError("parameter desc must be dict")
    _check_strings(desc)
    if not any(True for _ in model.parameters()):
        raise ValueError("network has no params")
    meta = desc.get(META_KEY) or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{BELONGS} '{META_KEY}' must be a dict.")
    if meta and (meta.get("format") != FORMAT or not isinstance(meta.get("version"), int)
                 or meta["version"] > VERSION):
        raise ValueError(f"{BELONGS} Unsupported desc format {meta.get('format')!r} version {meta.get('version')!r} "
                         f"(this msmodelslim reads {FORMAT} version <= {VERSION}).")
    axes = meta.get("axes") or {}
    operations = []
    for target, entry in desc.items():
        if target == META_KEY:
            continue
        if not isinstance(entry, dict) or not entry or set(entry) - {OUTPUT, INPUT}:
            raise _bad(target, "an entry must be a dict with 'output' and/or 'input'")
        try:
            spec = spec_of(model, target, axes.get(target))
        except (LookupError, TypeError) as exc:
            raise _bad(target, str(exc)) from None
        roles = spec.roles()
        keep = {}
        for role, value in entry.items():
            if role in roles:
                keep[role] = _keep_index(target, role, value, spec.size(role))
            elif len(roles) == 1:
                # a one-role layer (norm, depthwise conv, embedding) named by the other key
                only = next(iter(roles))
                if only not in entry:
                    keep[only] = _keep_index(target, role, value, spec.size(only))
            else:
                raise _bad(target, f"a {spec.kind} layer has no '{role}'")
        message = spec.check({role: len(index) for role, index in keep.items()})
        if message:
            raise _bad(target, message)
        operations.append((spec, keep))
    if meta.get("fingerprint") and meta["fingerprint"] != fingerprint(model):
        logger.warning("The desc was made for a model with other parameter names or shapes; every entry fits this "
                       "model, so it is applied.")
    _check_patches(model, meta)
    return operations, meta


def _check_patches(model, meta):
    for name, attrs in (meta.get("patches") or {}).items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise _bad(name, "the module to patch does not exist") from None
        for attr in attrs:
            if not hasattr(module, attr):
                raise _bad(name, f"it has no attribute '{attr}' to patch")
    config = getattr(model, "config", None)
    for field in meta.get("config") or {}:
        if config is None or not hasattr(config, field):
            raise ValueError(f"{BELONGS} The model config has no field '{field}'.")


class _Snapshot:
    """Everything applying a desc may change, so that it can be put back exactly."""

    def __init__(self, model, modules):
        self.states = []
        for module in modules:
            state = dict(module.__dict__)
            state["_parameters"] = dict(module._parameters)
            state["_buffers"] = dict(module._buffers)
            self.states.append((module, state))
        config = getattr(model, "config", None)
        self.config = (config, dict(vars(config))) if config is not None else None

    def restore(self):
        for module, state in self.states:
            module.__dict__.clear()
            module.__dict__.update(state)
        if self.config is not None:
            config, values = self.config
            vars(config).clear()
            vars(config).update(values)


def apply_desc(model, desc, check=None):
    """Apply ``desc`` to ``model`` in place; validate everything first, restore everything on any error.

    ``check(model)``, when given, runs after slicing (e.g. a forward pass); if it raises, the model is restored and
    a ``ValueError`` explains the failure. Raises the errors of :func:`parse_desc`.
    """
    operations, meta = parse_desc(model, desc)
    patched = [model.get_submodule(name) for name in (meta.get("patches") or {})]
    snapshot = _Snapshot(model, [spec.module for spec, _ in operations] + patched)
    cache = {}

    def slicer(value, axis, index):
        key = (id(value), axis.axis % value.dim(), axis.blocks, tuple(index.tolist()))
        if key not in cache:
            cache[key] = (value, slice_tensor(value, axis, index))
        return cache[key][1]

    try:
        for spec, keep in operations:
            spec.apply(keep, slicer)
        for name, attrs in (meta.get("patches") or {}).items():
            module = model.get_submodule(name)
            for attr, value in attrs.items():
                setattr(module, attr, value)
        config = getattr(model, "config", None)
        for field, value in (meta.get("config") or {}).items():
            setattr(config, field, value)
        if check is not None:
            try:
                check(model)
            except Exception as exc:
                raise ValueError(f"The pruned model fails to run ({type(exc).__name__}: {exc}); it was restored. "
                                 f"{BELONGS}") from exc
    except BaseException:
        snapshot.restore()
        raise
    return meta
