"""The ``desc``: a JSON-serialisable, self-contained record of a structured pruning, and its application.

Format (version 1)::

    {
      "<module name>": {"output": [kept, "--x-..."], "input": [kept, "-x--..."]},   # one entry per changed layer
      ...,
      "__meta__": {
        "format": "msmodelslim-prune-desc", "version": 1,
        "engine": "torch-pruning" | "structure:<family>[,<family of another tower>...]",
        "fingerprint": "<sha256 of the base model's parameter and buffer names and shapes>",
        "parameters": {"before": int, "after": int},
        "patches": {"<module name>": {"<attribute>": int}},   # attributes forward() reads (num_heads ...)
        "config": {"<config field>": int},                     # Hugging Face config fields, when uniform;
                                                               # "text_config.hidden_size": a tower's sub-config
        "axes": {"<parameter name>": int},                     # axis of entries that are bare parameters
        "head_splits": [[channels, heads, head size], ...]      # reshapes into heads that must keep their size
      }
    }

Each mask has one character per channel of the *original* layer: ``-`` kept, anything else removed; ``kept`` is the
number of ``-``. Normalisation and other per-channel layers use ``"input"`` (as in the original msModelSlim); a
desc written by the original for a plain Conv/Linear model applies as is (it simply has no ``__meta__``).
Applying a desc slices every listed layer directly - no tracing - after validating all of it; on any error the
model is restored exactly. ``patches`` and ``config`` set integer sizes only; a config field the desc changes must
agree with the pruned tensors (vocabulary, hidden, FFN and head sizes) and no other field may change. Tensors that
several names share (tied embeddings, a layer registered twice) must be pruned alike, so the tie survives.
"""
import hashlib
import re

import torch

from msmodelslim.pytorch.prune.layers import INNER, INPUT, OUTPUT, ParameterSpec, layer_spec, slice_tensor, spec_of
from msmodelslim.utils.logging import logger

META_KEY = "__meta__"
FORMAT = "msmodelslim-prune-desc"
VERSION = 1
KEPT, REMOVED = "-", "x"
BELONGS = "Please Check whether desc belongs to the network."
_ALLOWED = re.compile(r"""^[_A-Za-z0-9"'><=\[\])(,}{: /.*~-]*$""")
MAX_KEY_LENGTH = 512
MAX_DEPTH = 16  # a desc is at most 4 levels deep (__meta__ -> patches -> module -> attribute)
# the attributes of a layer that its weights' shapes determine (sliced with them, never patched)
_SHAPE_ATTRIBUTES = {"in_channels", "out_channels", "in_features", "out_features", "num_features",
                     "normalized_shape", "num_embeddings", "embedding_dim", "num_channels", "embed_dim"}
ROLE_ORDER = (OUTPUT, INPUT, INNER)  # one order for every layer, so a tensor shared by two layers is sliced alike


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
    """The desc of removing ``removed_units[g]`` from each group ``groups[g]`` of ``model``; the reshapes into heads
    of the groups that lose units go to ``head_splits``."""
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
    splits = sorted({tuple(split) for g, units in removed_units.items() if units for split in groups[g].head_splits})
    if splits:
        desc[META_KEY]["head_splits"] = [list(split) for split in splits]
    return desc


def _check_strings(desc):
    """Refuse keys and strings outside the whitelist, and nesting deeper than :data:`MAX_DEPTH` (iteratively, so
    that no input can exhaust the interpreter's stack)."""
    stack = [(desc, 0)]
    while stack:
        obj, depth = stack.pop()
        if depth > MAX_DEPTH and isinstance(obj, (dict, list, tuple)):
            raise ValueError(f"desc is nested more than {MAX_DEPTH} levels deep; a desc has at most 4 levels.")
        if isinstance(obj, dict):
            for key, value in obj.items():
                if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not _ALLOWED.match(key):
                    raise ValueError("desc contains invalid characters.")
                stack.append((value, depth + 1))
        elif isinstance(obj, (list, tuple)):
            stack.extend((value, depth + 1) for value in obj)
        elif isinstance(obj, str) and not _ALLOWED.match(obj):
            raise ValueError("desc contains invalid characters.")


def _bad(target, why):
    return ValueError(f"{BELONGS} Module '{target}': {why}.")


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value, limit=300):
    """``repr(value)`` cut to ``limit`` characters (never recursing deeper than the desc's depth limit)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _keep_index(target, role, entry, size):
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and _is_count(entry[0])
            and isinstance(entry[1], str)):
        raise _bad(target, f"'{role}' must be [kept_count, mask], got {_short(entry)}")
    kept, mask = entry
    if len(mask) != size:
        raise _bad(target, f"the '{role}' mask has {len(mask)} channels, the layer has {size}")
    index = [i for i, ch in enumerate(mask) if ch == KEPT]
    if len(index) != kept:
        raise _bad(target, f"'{role}' says {kept} channels are kept, its mask keeps {len(index)}")
    if kept < 1:
        raise _bad(target, f"'{role}' keeps no channel")
    return torch.as_tensor(index, dtype=torch.long)


def _check_meta(meta):
    """Refuse a ``__meta__`` whose sections do not have the documented types."""
    if meta and (meta.get("format") != FORMAT or not _is_count(meta.get("version")) or meta["version"] > VERSION):
        raise ValueError(f"{BELONGS} Unsupported desc format {_short(meta.get('format'), 80)} version "
                         f"{_short(meta.get('version'), 80)} (this msmodelslim reads {FORMAT} version <= {VERSION}).")
    for section in ("patches", "config", "axes"):
        if not isinstance(meta.get(section) or {}, dict):
            raise ValueError(f"{BELONGS} '{META_KEY}.{section}' must be a dict, got {type(meta[section]).__name__}.")
    for name, attrs in (meta.get("patches") or {}).items():
        if not isinstance(attrs, dict) or not all(_is_count(v) for v in attrs.values()):
            raise _bad(name, f"a patch must map attribute names to integers, got {_short(attrs, 120)}")
    for field, value in (meta.get("config") or {}).items():
        if not _is_count(value) or value < 1:
            raise ValueError(f"{BELONGS} The config field '{field}' must be set to a positive integer (a size), "
                             f"got {_short(value, 80)}.")
    for target, axis in (meta.get("axes") or {}).items():
        if not _is_count(axis):
            raise _bad(target, f"its axis must be an integer, got {_short(axis, 80)}")
    splits = meta.get("head_splits") or []
    if not isinstance(splits, list) or not all(
            isinstance(s, list) and len(s) == 3 and all(_is_count(n) and n > 0 for n in s) and s[0] == s[1] * s[2]
            for s in splits):
        raise ValueError(f"{BELONGS} '{META_KEY}.head_splits' must be a list of [channels, heads, head size] with "
                         f"channels = heads * head size, got {_short(splits, 120)}.")


def _role_keep(target, spec, entry):
    """``{role: kept index}`` of one desc entry, roles in :data:`ROLE_ORDER`."""
    if not isinstance(entry, dict) or not entry or set(entry) - {OUTPUT, INPUT, INNER}:
        raise _bad(target, "an entry must be a dict with 'output', 'input' and/or 'inner'")
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
    return {role: keep[role] for role in ROLE_ORDER if role in keep}


def _identity(spec):
    """What an entry really changes: the module, or the (module, attribute) of a bare parameter."""
    return (id(spec.module), spec.attr) if isinstance(spec, ParameterSpec) else (id(spec.module), None)


def _merge_alias(first, target, keep):
    """``first`` (an operation) with the entry ``keep`` of ``target``, the same layer under another name, merged.

    Raises:
        ValueError: the two names give the layer different masks for one role.
    """
    first_target, spec, first_keep = first
    for role, index in keep.items():
        if role in first_keep and not torch.equal(first_keep[role], index):
            raise ValueError(f"{BELONGS} Modules '{first_target}' and '{target}' are one layer registered under two "
                             f"names, and the desc gives them different '{role}' masks.")
    merged = {**keep, **first_keep}
    return first_target, spec, {role: merged[role] for role in ROLE_ORDER if role in merged}


def parse_desc(model, desc):
    """Validate ``desc`` against ``model`` and return ``(operations, meta)`` without touching the model.

    ``operations`` is a list of ``(target, spec, {role: kept index tensor})``; a layer registered under several
    names appears once.

    Raises:
        TypeError: ``desc`` is not a dict.
        ValueError: invalid characters or nesting, a model without parameters, a malformed ``__meta__``, an entry
            that does not fit the model (the message names the first mismatching module), or one layer given
            different masks under two names (both are named).
    """
    if not isinstance(desc, dict):
        raise TypeError("parameter desc must be dict")
    _check_strings(desc)
    if not any(True for _ in model.parameters()):
        raise ValueError("network has no params")
    meta = desc.get(META_KEY) or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{BELONGS} '{META_KEY}' must be a dict.")
    _check_meta(meta)
    axes = meta.get("axes") or {}
    stray = sorted(target for target in axes if target not in desc)
    if stray:
        raise _bad(stray[0], "'__meta__.axes' gives its axis, but the desc has no entry for it")
    operations, seen = [], {}
    for target, entry in desc.items():
        if target == META_KEY:
            continue
        try:
            spec = spec_of(model, target, axes.get(target))
        except (LookupError, TypeError) as exc:
            raise _bad(target, str(exc)) from None
        keep = _role_keep(target, spec, entry)
        ident = _identity(spec)
        if ident in seen:
            operations[seen[ident]] = _merge_alias(operations[seen[ident]], target, keep)
            keep = operations[seen[ident]][2]
        else:
            seen[ident] = len(operations)
            operations.append((target, spec, keep))
        message = spec.check_indices(keep)
        if message:
            raise _bad(target, message)
    if meta.get("fingerprint") and meta["fingerprint"] != fingerprint(model):
        logger.warning("The desc was made for a model with other parameter names or shapes; every entry fits this "
                       "model, so it is applied.")
    _check_patches(model, meta)
    return operations, meta


def _check_patches(model, meta):
    """Patches may set integer attributes only (sizes forward() reads), and config fields that exist."""
    for name, attrs in (meta.get("patches") or {}).items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise _bad(name, "the module to patch does not exist") from None
        for attr in attrs:
            if not hasattr(module, attr):
                raise _bad(name, f"it has no attribute '{attr}' to patch")
            if attr in _SHAPE_ATTRIBUTES and layer_spec(module) is not None:
                raise _bad(name, f"its attribute '{attr}' follows the shape of its weights, which the desc's masks "
                                 "set; a patch may not")
            if not _is_count(getattr(module, attr)):
                raise _bad(name, f"its attribute '{attr}' is not an integer; a desc patches integer sizes only")
    for field in meta.get("config") or {}:
        owner, name = config_field(model, field)
        current = getattr(owner, name)
        if current is not None and not _is_count(current):
            raise ValueError(f"{BELONGS} The config field '{field}' is not an integer ({_short(current, 80)}); a "
                             "desc sets integer sizes only.")


def config_field(model, key):
    """``(config object, field name)`` that a desc's config ``key`` names: ``"hidden_size"`` on the model's config,
    ``"text_config.hidden_size"`` on a sub-config of it (a tower of a composite model).

    Raises:
        ValueError: the model has no config, or the key names no field of it.
    """
    owner = getattr(model, "config", None)
    *path, name = key.split(".")
    for part in path:
        owner = getattr(owner, part, None) if owner is not None and hasattr(owner, "to_dict") else None
    if owner is None or not hasattr(owner, "to_dict") or not hasattr(owner, name):
        raise ValueError(f"{BELONGS} The model config has no field '{key}'.")
    return owner, name


def config_values(model, keys):
    """``{key: current value}`` of the desc config ``keys`` (dotted paths into sub-configs allowed)."""
    return {key: getattr(*config_field(model, key)) for key in keys}


def set_config_values(model, values):
    """Set the desc config fields ``values`` (``{dotted key: value}``) on the model's config."""
    for key, value in values.items():
        setattr(*config_field(model, key), value)


def _config_owner_model(model, owner):
    """The module that ``owner`` configures: ``model`` for its own config, else the outermost sub-model whose config
    is that object (a tower); None when no module is."""
    if owner is getattr(model, "config", None):
        return model
    return next((module for _, module in model.named_modules() if getattr(module, "config", None) is owner), None)


def _resolve(model, name):
    holder, _, attr = name.rpartition(".")
    try:
        owner = model.get_submodule(holder) if holder else model
    except AttributeError:
        return None
    return getattr(owner, attr, None)


def shared_tensors(model):
    """``[[names of one tensor], ...]`` for every parameter or buffer reachable under several names."""
    names = {}
    for name, tensor in list(model.named_parameters(remove_duplicate=False)) + list(
            model.named_buffers(remove_duplicate=False)):
        names.setdefault(id(tensor), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _check_ties(model, shared):
    """Raise ``ValueError`` when names that shared one tensor before the slicing no longer do."""
    for group in shared:
        objects = [_resolve(model, name) for name in group]
        if any(obj is not objects[0] for obj in objects[1:]):
            raise ValueError(f"{BELONGS} {', '.join(repr(n) for n in group)} share one tensor, but the desc prunes "
                             "them differently (or not all of them); the tie would break.")


def _check_config(model, fields, old):
    """Every config field the desc changes must agree with the pruned tensors (``old``: the values before).

    A changed field msmodelslim derives from shapes (vocabulary, hidden, FFN and head sizes) must equal the shape
    the pruned weights have; any other field may not change, since no tensor explains its new value. A field set
    to the value it already had is accepted.
    """
    from msmodelslim.pytorch.prune.structure import implied_config

    changed = {field: value for field, value in fields.items() if value != old.get(field)}
    implied_by_owner = {}
    for field, value in changed.items():
        owner, name = config_field(model, field)
        if id(owner) not in implied_by_owner:
            module = _config_owner_model(model, owner)
            implied_by_owner[id(owner)] = implied_config(module) if module is not None else {}
        implied = implied_by_owner[id(owner)]
        if name in implied:
            expected, where = implied[name]
            if expected is None:
                raise ValueError(f"{BELONGS} The desc sets config.{field} = {value}, but {where}.")
            if value != expected:
                raise ValueError(f"{BELONGS} The desc sets config.{field} = {value}, which contradicts the pruned "
                                 f"weights: {where}.")
        else:
            raise ValueError(f"{BELONGS} The desc changes config.{field} from {old.get(field)!r} to {value}, and no "
                             "pruned tensor shape explains that field.")


class _Snapshot:
    """Everything applying a desc may change, so that it can be put back exactly."""

    def __init__(self, modules, configs):
        self.states = []
        for module in modules:
            state = dict(module.__dict__)
            state["_parameters"] = dict(module._parameters)
            state["_buffers"] = dict(module._buffers)
            self.states.append((module, state))
        self.configs = [(config, dict(vars(config))) for config in configs]

    def restore(self):
        for module, state in self.states:
            module.__dict__.clear()
            module.__dict__.update(state)
        for config, values in self.configs:
            vars(config).clear()
            vars(config).update(values)


def _slice_all(model, operations, meta):
    cache = {}

    def slicer(value, axis, index):
        key = (id(value), axis.axis % value.dim(), axis.blocks, tuple(index.tolist()))
        if key not in cache:
            try:
                cache[key] = (value, slice_tensor(value, axis, index))
            except IndexError as exc:  # e.g. two groups of a plan claim the same tensor: the second finds it cut
                raise PrunedModelError(f"A tensor of shape {tuple(value.shape)} cannot keep channel "
                                       f"{int(index.max())} along axis {key[1]} ({exc}); the model was restored. "
                                       f"{BELONGS}") from exc
        return cache[key][1]

    for _, spec, keep in operations:
        spec.apply(keep, slicer)
    for name, attrs in (meta.get("patches") or {}).items():
        module = model.get_submodule(name)
        for attr, value in attrs.items():
            setattr(module, attr, value)


class PrunedModelError(ValueError):
    """The pruned model fails to run (``check`` raised); the model was restored. The cause is chained."""


def apply_operations(model, operations, meta, check=None, keep=True):
    """Apply parsed ``operations`` and ``meta`` (from :func:`parse_desc`) to ``model`` in place; restore
    everything on any error (KeyboardInterrupt included), and after a successful ``check`` too when ``keep`` is
    False (a trial).

    Raises:
        ValueError: shared tensors would be untied, a config field contradicts the pruned weights;
            :class:`PrunedModelError` (a ``ValueError``) when ``check(model)`` raised.
    """
    patched = [model.get_submodule(name) for name in (meta.get("patches") or {})]
    # a layer's tensors may live in its sub-modules (nn.MultiheadAttention's out_proj): snapshot those too
    touched = {id(m): m for root in [spec.module for _, spec, _ in operations] + patched for m in root.modules()}
    fields = dict(meta.get("config") or {})
    owners = [config_field(model, field)[0] for field in fields]
    old = config_values(model, fields)
    snapshot = _Snapshot(list(touched.values()), list({id(o): o for o in owners}.values()))
    shared = shared_tensors(model)
    try:
        _slice_all(model, operations, meta)
        _check_ties(model, shared)
        set_config_values(model, fields)
        _check_config(model, fields, old)
        if check is not None:
            try:
                check(model)
            except Exception as exc:
                raise PrunedModelError(f"The pruned model fails to run ({type(exc).__name__}: {exc}); it was "
                                       f"restored. {BELONGS}") from exc
    except BaseException:
        snapshot.restore()
        raise
    if not keep:
        snapshot.restore()
    return meta


def apply_desc(model, desc, check=None):
    """Apply ``desc`` to ``model`` in place; validate everything first, restore everything on any error.

    ``check(model)``, when given, runs after slicing (e.g. a forward pass); if it raises, the model is restored and
    a ``ValueError`` explains the failure. Raises the errors of :func:`parse_desc` and :func:`apply_operations`.
    """
    operations, meta = parse_desc(model, desc)
    return apply_operations(model, operations, meta, check=check)
