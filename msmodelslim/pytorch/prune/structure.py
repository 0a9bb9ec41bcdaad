"""PruneTorch's channel groups for models of a described transformer family.

Generic graph tracing is fragile on current transformer implementations (torch-pruning crashes on GPT-2 and never
returns on Llama), so recognised families are pruned from the one framework-free family description
(:mod:`msmodelslim.common.structure.families`, which also says how to add a family). From it we derive:

* **heads** (one group per layer): a unit is a key/value head together with the query heads that share it
  (grouped-query attention; a plain query head when there is no grouping); it covers the unit's rows of q, k, v
  (its parts of a fused qkv, whose q part may be wider than k and v) and the matching input columns of the
  output projection;
* **ffn** (one group per layer): a unit is one neuron: a row of every up/gate projection (two rows of a fused
  gate_up) and a column of the down projection;
* **hidden** (one group for the model): a unit is one channel of the residual stream, shared by the embeddings,
  every normalisation layer, every projection's input or output on the stream, and the heads on top.
"""
from dataclasses import replace

from torch import nn

from msmodelslim.common.structure import families
from msmodelslim.common.structure.families import FAMILIES, Family  # noqa: F401  (re-exported)
from msmodelslim.common.structure.layout import fused_gate_up_rows, fused_qkv_rows, head_units
from msmodelslim.pytorch.prune.groups import ChannelGroup, Member
from msmodelslim.pytorch.prune.layers import INPUT, OUTPUT, layer_spec
from msmodelslim.utils.logging import logger


def detect_family(model):
    """The :class:`Family` of a model and its layers ``{prefix: index}``, or ``(None, {})``; the model's
    ``config.model_type`` is consulted before the module names."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    names = [name for name, _ in model.named_modules()]
    return families.detect_family(names, model_type if isinstance(model_type, str) else None)


def head_size(model, family, prefix):
    """The size of one attention head of layer ``prefix``: from the attention module, else from the config."""
    attention = model.get_submodule(prefix + family.attention)
    for attr in ("head_dim", "attention_head_size"):
        value = getattr(attention, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    return getattr(config, "head_dim", None) or (hidden // heads if heads and hidden else None)


def head_geometry(head_dim, q_out, k_out):
    """``(heads, kv_heads, head_dim)`` of one layer from its head size and query / key channel counts."""
    if not head_dim or q_out % head_dim or k_out % head_dim or not k_out:
        raise ValueError(f"cannot infer the head size (q has {q_out} rows, k has {k_out})")
    return q_out // head_dim, k_out // head_dim, head_dim


def _attention_widths(model, family, prefix):
    """``(query channels, key channels)`` of a layer: the output projection reads the query channels; a fused
    qkv holds the rest as two equal key and value parts."""
    q_out = layer_spec(model.get_submodule(prefix + family.o)).size(INPUT)
    if family.qkv:
        total = layer_spec(model.get_submodule(prefix + family.qkv)).size(OUTPUT)
        return q_out, (total - q_out) // 2
    return q_out, layer_spec(model.get_submodule(prefix + family.k)).size(OUTPUT)


def _member(target, role, per_unit):
    idxs, roots = [], []
    for unit, indices in enumerate(per_unit):
        idxs += indices
        roots += [unit] * len(indices)
    return Member(target, role, idxs, roots)


def _head_aligned(model, family, prefix):
    """``[(name, role, "q" | "k")]``: layers inside a layer's attention, beyond the family's projections, whose
    channels are laid out by heads like the query or key projection: a norm of the whole projection (OLMo-2's
    ``q_norm``/``k_norm``; role input) or a Linear writing one value per query channel (an output gate; role
    output). A per-head norm (one head's width, shared by all heads, as Qwen3's) is not listed: pruning heads
    leaves it as it is."""
    if not family.attention or family.qkv:
        return []
    q_out, k_out = _attention_widths(model, family, prefix)
    own = {prefix + p for p in family.projections()}
    found = []
    attention = prefix + family.attention
    for name, module in model.get_submodule(attention).named_modules(prefix=attention):
        spec = layer_spec(module) if name not in own and not list(module.children()) else None
        if spec is None:
            continue
        roles = list(spec.roles())
        if roles == [INPUT] and spec.size(INPUT) in (q_out, k_out):
            found.append((name, INPUT, "q" if spec.size(INPUT) == q_out else "k"))
        elif isinstance(module, nn.Linear) and spec.size(OUTPUT) == q_out:
            found.append((name, OUTPUT, "q"))
    return found


def _head_group(model, family, prefix):
    q_out, k_out = _attention_widths(model, family, prefix)
    heads, kv_heads, head_dim = head_geometry(head_size(model, family, prefix), q_out, k_out)
    units = head_units(heads, kv_heads, head_dim)
    if family.qkv:
        members = [_member(prefix + family.qkv, OUTPUT, [fused_qkv_rows(q, kv, q_out, k_out) for q, kv in units])]
    else:
        members = [_member(prefix + family.q, OUTPUT, [q for q, _ in units]),
                   _member(prefix + family.k, OUTPUT, [kv for _, kv in units]),
                   _member(prefix + family.v, OUTPUT, [kv for _, kv in units])]
    for name, role, follows in _head_aligned(model, family, prefix):
        members.append(_member(name, role, [q if follows == "q" else kv for q, kv in units]))
    members.append(_member(prefix + family.o, INPUT, [q for q, _ in units]))
    group = ChannelGroup(name=f"{prefix}heads", size=kv_heads, members=members, kind="heads",
                         unit_channels=(heads // kv_heads) * head_dim)
    return group, (heads, kv_heads, head_dim)


def _ffn_group(model, family, prefix):
    size = layer_spec(model.get_submodule(prefix + family.down)).size(INPUT)
    per_unit = [[i] for i in range(size)]
    members = [_member(prefix + up, OUTPUT, per_unit) for up in family.up]
    if family.gate_up:
        members.append(_member(prefix + family.gate_up, OUTPUT, [fused_gate_up_rows([i], size) for i in range(size)]))
    members.append(_member(prefix + family.down, INPUT, per_unit))
    return ChannelGroup(name=f"{prefix}ffn", size=size, members=members, kind="ffn")


def _hidden_group(model, family, layers, hidden):
    """The residual-stream group, or a protected one naming what could not be matched by name."""
    per_unit = [[i] for i in range(hidden)]
    members, unknown = [], []
    covered = set()
    names = {name for name, _ in model.named_modules()}
    for prefix in layers:
        for name in (*family.attention_inputs(), *family.ffn_inputs()):
            members.append(_member(prefix + name, INPUT, per_unit))
        members.append(_member(prefix + family.o, OUTPUT, per_unit))
        members.append(_member(prefix + family.down, OUTPUT, per_unit))
        for norm in family.norms:
            if prefix + norm in names:
                members.append(_member(prefix + norm, INPUT, per_unit))
        covered.update(prefix + p for p in family.projections() + list(family.norms))
        for name, role, _ in _head_aligned(model, family, prefix):
            covered.add(name)
            if role == OUTPUT and layer_spec(model.get_submodule(name)).size(INPUT) == hidden:
                members.append(_member(name, INPUT, per_unit))
    layer_prefixes = tuple(layers)
    inside_attention = {f"{name}.{child}" for name, m in model.named_modules()
                        if isinstance(m, nn.MultiheadAttention) for child, _ in m.named_children()}
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own or name in covered or name in inside_attention:  # nn.MultiheadAttention slices its out_proj
            continue
        inside = name.startswith(layer_prefixes)
        spec = layer_spec(module)
        touches = [p for _, p in own if hidden in p.shape]
        if spec is None:
            for pname, param in own:
                if param.dim() and param.shape[-1] == hidden and not inside:
                    members.append(Member(f"{name}.{pname}" if name else pname, OUTPUT, list(range(hidden)),
                                          list(range(hidden)), axis=param.dim() - 1))
                elif hidden in param.shape:
                    unknown.append(f"{name}.{pname}")
            continue
        matched = [role for role in spec.roles() if spec.size(role) == hidden]
        if inside and matched or touches and not matched:
            unknown.append(name)  # e.g. an extra layer inside a block: its coupling is not described by the rules
        else:
            members.extend(_member(name, role, per_unit) for role in matched)
    group = ChannelGroup(name="hidden", size=hidden, members=members, kind="hidden")
    if unknown:
        group.protected = "the hidden size also reaches " + ", ".join(unknown[:5])
    return group


def complete_from_graph(model, group, traced):
    """``group`` (the residual stream found by name) with the members the dependency graph ``traced`` adds, when
    the graph agrees with it; otherwise ``group`` unchanged.

    The graph follows the stream into layers the family rules do not name (a cross-attention, extra norms, a
    layer scale, a gate). It is trusted only where it confirms the rules: every traced group that shares a member
    with ``group`` must have ``group.size`` units, map them one to one onto channels (no concatenation or
    reordering), be prunable, and together they must hold every layer the rules found (a bare parameter that
    forward() never reads, such as an unused mask token, is not traced and keeps the rules' word).
    """
    def key(member):  # the tensors and axes it slices: modules that share a weight (tied embeddings) are one
        if member.axis is not None:
            return member.target, member.role
        module = model.get_submodule(member.target)
        spec = layer_spec(module)
        if spec is None or member.role not in spec.roles():
            return member.target, member.role
        return frozenset((id(module.get_parameter(a.tensor)), a.axis) for a in spec.roles()[member.role])

    ours = {key(m) for m in group.members}
    touching = [g for g in traced if ours & {key(m) for m in g.members}]
    if not touching or any(g.protected or g.size != group.size for g in touching):
        return group
    found = {key(m): m for g in touching for m in g.members}
    modules = {key(m): m.target for m in group.members if m.axis is None}  # an unused bare parameter is untraced
    untraced = sorted({target for k, target in modules.items() if k not in found})
    if untraced:
        return replace(group, protected=f"{group.protected}; {', '.join(untraced[:4])} did not run in the traced "
                                        "forward (sample inputs that exercise them let the graph confirm the rest)")
    if any(m.idxs != m.roots for m in found.values()):
        return group
    extra = [m for k, m in found.items() if k not in ours]
    logger.info("The residual stream also reaches %s (from the dependency graph).",
                ", ".join(sorted({m.target for m in extra})[:8]) or "nothing else")
    return ChannelGroup(name=group.name, size=group.size, members=group.members + extra, kind=group.kind)


def _composite(config):
    """Whether a model config describes several sub-models (multimodal, encoder-decoder) instead of one stream."""
    return config is not None and not isinstance(getattr(config, "hidden_size", None), int)


def _completed(model, group, trace):
    """:func:`complete_from_graph` with the groups of ``trace()``; ``group`` as it is when tracing fails."""
    from msmodelslim.errors import ModelslimError

    try:
        traced = trace()
    except ModelslimError as exc:  # a graph that cannot be built: the stream stays protected, for the reason found
        logger.debug("No dependency graph to complete the residual stream: %s", exc)
        return group
    return complete_from_graph(model, group, traced)


class StructureEngine:
    """Channel groups and attribute patches of a model of a recognised transformer family."""

    def __init__(self, model, family, layers, prune_hidden=True, trace=None):
        self.model = model
        self.family = family
        self.layers = layers
        self.groups = []
        self._heads = {}  # group index -> (layer prefix, heads, kv_heads, head_dim)
        for prefix in layers:
            group, geometry = _head_group(model, family, prefix)
            self._heads[len(self.groups)] = (prefix, *geometry)
            self.groups.append(group)
            self.groups.append(_ffn_group(model, family, prefix))
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if not hidden and layers:  # no config: the output projection writes the residual stream
            hidden = layer_spec(model.get_submodule(next(iter(layers)) + family.o)).size(OUTPUT)
        if hidden:
            group = _hidden_group(model, family, layers, hidden)
            if not prune_hidden:
                group.protected = "hidden-size pruning is off"
            elif _composite(getattr(model, "config", None)):
                # a composite model (multimodal, encoder-decoder): another tower may share the width by chance, so
                # what the rules matched by size is pruned only where the dependency graph confirms it
                group.protected = group.protected or ("a composite model: its residual stream is pruned only where "
                                                      "the dependency graph confirms it")
                group = _completed(model, group, trace) if trace is not None else group
            elif group.protected and trace is not None:
                group = _completed(model, group, trace)
            self.groups.append(group)

    @property
    def engine(self):
        return f"structure:{self.family.name}"

    def tied(self, kind, uniform_layers):
        """Whether the groups of ``kind`` keep equal unit counts in every layer: asked for (``uniform_layers``),
        or forced for heads when forward() reads the head count from the shared config."""
        if kind == "heads" and self.family.heads_in_config:
            return True
        return uniform_layers and kind in ("heads", "ffn")

    def patches(self, removed):
        """``(module patches, config fields)`` that make forward() agree with the pruned shapes."""
        family, config = self.family, getattr(self.model, "config", None)
        if _composite(config):
            config = None  # a composite config (encoder-decoder, multimodal): its fields live in sub-configs
        patches, heads_kept, kv_kept, ffn_kept, hidden_kept = {}, set(), set(), set(), None
        for g, group in enumerate(self.groups):
            kept = group.size - len(removed.get(g, ()))
            if group.kind == "heads":
                prefix, heads, kv_heads, head_dim = self._heads[g]
                new_kv = kept
                new_heads = heads // kv_heads * new_kv
                heads_kept.add(new_heads)
                kv_kept.add(new_kv)
                values = {"heads": new_heads, "kv_heads": new_kv, "q_channels": new_heads * head_dim}
                attrs = {attr: values[what] for attr, what in family.head_attrs}
                if attrs and g in removed:
                    patches[prefix + family.attention] = attrs
            elif group.kind == "ffn":
                ffn_kept.add(kept)
            elif group.kind == "hidden":
                hidden_kept = kept
        if config is None:
            return patches, {}
        fields = {}
        if len(heads_kept) == 1:
            fields[family.heads_field] = heads_kept.pop()
        if family.kv_field and len(kv_kept) == 1:
            fields[family.kv_field] = kv_kept.pop()
        if len(ffn_kept) == 1:
            fields[family.ffn_field] = ffn_kept.pop()
        if hidden_kept is not None and hidden_kept != config.hidden_size:  # config has an int hidden_size here
            head_dim = next(iter(self._heads.values()))[3] if self._heads else None
            if family.explicit_head_dim:
                fields["hidden_size"] = hidden_kept
                fields["head_dim"] = head_dim
            elif head_dim and fields.get(family.heads_field, 0) * head_dim == hidden_kept:
                fields["hidden_size"] = hidden_kept
        fields = {k: v for k, v in fields.items() if hasattr(config, k) and getattr(config, k) != v}
        if fields and not _config_accepts(config, fields):
            fields = {}
        return patches, fields


def _config_accepts(config, fields):
    """Whether the config class accepts ``fields`` (transformers validates e.g. hidden_size % heads)."""
    try:
        type(config)(**{**config.to_dict(), **fields})
    except Exception as exc:  # transformers raises several types from its validators
        logger.info("The model config cannot describe the pruned shapes (%s); rebuild the model from the desc "
                    "(prune_by_desc) rather than from_pretrained.", str(exc).splitlines()[-1].strip())
        return False
    return True


def _uniform(values, field, what):
    """``(value, where)`` when every layer agrees on ``values``, else ``(None, why the field cannot describe it)``."""
    if any(value is None for value in values):
        return None, f"the number of {what} cannot be read from the layers"
    distinct = sorted(set(values))
    if len(distinct) == 1:
        return distinct[0], f"every layer has {distinct[0]} {what}"
    return None, f"the layers have different numbers of {what} ({distinct}), so config.{field} cannot describe them"


def _layer_sizes(model, family, prefix):
    """``(heads, kv_heads, ffn neurons, hidden, head_dim)`` of one layer as its tensors are now."""
    head_dim = head_size(model, family, prefix)
    q_out, k_out = _attention_widths(model, family, prefix)
    ffn = layer_spec(model.get_submodule(prefix + family.down)).size(INPUT)
    hidden = layer_spec(model.get_submodule(prefix + family.o)).size(OUTPUT)  # o writes the residual stream
    return _per_head(q_out, head_dim), _per_head(k_out, head_dim), ffn, hidden, head_dim


def _per_head(channels, head_dim):
    """Whole heads in ``channels`` (a float when they do not divide, so that no integer field matches)."""
    if not head_dim:
        return None
    return channels // head_dim if channels % head_dim == 0 else channels / head_dim


def implied_config(model):
    """The config fields that describe tensor shapes, as the model's tensors have them now.

    Returns ``{field: (value, where)}``: ``vocab_size`` from the input embedding; for a recognised family the
    heads, key/value heads, FFN, hidden and (where the config carries it) head sizes. ``value`` is None when the
    layers disagree (non-uniform pruning); ``where`` explains the value. Raises nothing for a model without a
    config or family (the result is then partial or empty).
    """
    implied = {}
    try:
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except (NotImplementedError, AttributeError):
        embedding = None
    if isinstance(embedding, nn.Embedding):
        implied["vocab_size"] = (embedding.num_embeddings, f"the input embedding has {embedding.num_embeddings} rows")
    family, layers = detect_family(model)
    if family is None:
        return implied
    sizes = [_layer_sizes(model, family, prefix) for prefix in layers]
    columns = dict(zip(("heads", "kv", "ffn", "hidden", "head_dim"), zip(*sizes)))
    implied[family.heads_field] = _uniform(columns["heads"], family.heads_field, "attention heads")
    if family.kv_field:
        implied[family.kv_field] = _uniform(columns["kv"], family.kv_field, "key/value heads")
    implied[family.ffn_field] = _uniform(columns["ffn"], family.ffn_field, "FFN neurons")
    implied["hidden_size"] = _uniform(columns["hidden"], "hidden_size", "hidden channels")
    if family.explicit_head_dim:
        implied["head_dim"] = _uniform(columns["head_dim"], "head_dim", "channels per head")
    return implied
