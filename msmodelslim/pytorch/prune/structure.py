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
* **moe_ffn** (one group per block of experts of a mixture-of-experts layer, stored as 3-D tensors): a unit is
  neuron ``i`` of every expert of the block, so the tensors stay rectangular;
* **hidden** (one group for the model): a unit is one channel of the residual stream, shared by the embeddings,
  every normalisation layer, every projection's input or output on the stream, and the heads on top.
"""
import re
from dataclasses import dataclass, field, replace

from torch import nn

from msmodelslim.common.structure import families
from msmodelslim.common.structure.families import FAMILIES, Family  # noqa: F401  (re-exported)
from msmodelslim.common.structure.layout import fused_gate_up_rows, fused_qkv_rows, head_units
from msmodelslim.pytorch.prune.groups import ChannelGroup, Member
from msmodelslim.pytorch.prune.layers import INNER, INPUT, OUTPUT, ExpertsSpec, layer_spec
from msmodelslim.utils.logging import logger


def detect_family(model):
    """The :class:`Family` of a model and its layers ``{prefix: index}``, or ``(None, {})``; the model's
    ``config.model_type`` is consulted before the module names."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    names = [name for name, _ in model.named_modules()]
    return families.detect_family(names, model_type if isinstance(model_type, str) else None)



def _parent(prefix):
    """The module that holds a layer: ``model.layers.3.`` -> ``model.layers``."""
    return prefix.rstrip(".").rpartition(".")[0]


def layer_stem(model):
    """What the names of the model's first family layers start with before their index (``model.layers.``), or
    None when no family's layers are found."""
    _, layers = detect_family(model)
    return _parent(next(iter(layers))) + "." if layers else None


def layer_pattern(model):
    """The regular expression whose one group captures the layer id in the model's parameter names (e.g.
    ``model\\.layers\\.(\\d+)\\.``), or None when no family's layers are found."""
    stem = layer_stem(model)
    return None if stem is None else re.escape(stem) + r"(\d+)\."


@dataclass
class MoeLayer:
    """The mixture-of-experts parts of one layer: blocks of experts (3-D tensors), the router weights that read
    the hidden size and the shared experts stored as Linear layers."""

    experts: list = field(default_factory=list)  # qualified names of ExpertsSpec modules
    routers: list = field(default_factory=list)  # (qualified name, Linear?) of weights [experts, hidden]
    shared: list = field(default_factory=list)  # (up names, down name) of Linear FFNs
    gates: list = field(default_factory=list)  # Linear layers hidden -> 1 (a shared expert's gate)

    def names(self):
        """Every module name this description covers."""
        found = list(self.experts) + [name for name, _ in self.routers] + list(self.gates)
        for ups, down in self.shared:
            found += [*ups, down]
        return found


def _moe_layer(model, prefix, hidden):
    """The :class:`MoeLayer` of layer ``prefix``, or None when it holds no experts stored as 3-D tensors."""
    layer = model.get_submodule(prefix[:-1])
    experts = [prefix + name for name, module in layer.named_modules()
               if name and isinstance(layer_spec(module), ExpertsSpec)]
    if not experts:
        return None
    counts = {model.get_submodule(name).down_proj.shape[0] for name in experts}
    moe = MoeLayer(experts=experts)
    parents = {name.rpartition(".")[0] for name in experts}
    for parent in sorted(parents):
        inside_ffn = set()
        for child, module in model.get_submodule(parent).named_modules(prefix=parent):
            if child == parent or child in experts or child.startswith(tuple(f"{n}." for n in inside_ffn)):
                continue
            weight = getattr(module, "weight", None)
            if _linear_ffn(module):
                ups, down = _linear_ffn(module)
                moe.shared.append((tuple(f"{child}.{up}" for up in ups), f"{child}.{down}"))
                inside_ffn.add(child)
            elif isinstance(module, nn.Linear) and module.in_features == hidden and module.out_features == 1:
                moe.gates.append(child)
            elif isinstance(weight, nn.Parameter) and weight.dim() == 2 and tuple(weight.shape)[1] == hidden \
                    and weight.shape[0] in counts:
                moe.routers.append((child, isinstance(module, nn.Linear)))
    return moe


def _linear_ffn(module):
    """``((up names), down name)`` of a Linear gated FFN module (gate_proj/up_proj/down_proj), or None."""
    children = dict(module.named_children())
    down = children.get("down_proj")
    ups = tuple(n for n in ("gate_proj", "up_proj") if isinstance(children.get(n), nn.Linear))
    if isinstance(down, nn.Linear) and ups:
        return (ups, "down_proj")
    return None


def detect_layers(model):
    """``(family, layers, moe)`` for PruneTorch: the family and its dense layers as :func:`detect_family` finds
    them, plus ``moe = {prefix: MoeLayer}``: the layers that hold the family's attention and experts stored as
    3-D tensors instead of its FFN (every layer of Mixtral-like models, some of DeepSeek-like ones)."""
    family, layers = detect_family(model)
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if not isinstance(hidden, int):
        return family, layers, {}
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    names = [name for name, _ in model.named_modules()]
    candidates = [family] if family is not None else (
        [f for f in FAMILIES if model_type in f.model_types] + [f for f in FAMILIES if model_type not in f.model_types])
    for candidate in candidates:
        attention_only = replace(candidate, up=(), gate_up=None, down=None)
        moe = {}
        for prefix in families.find_layers(names, attention_only):
            if prefix not in layers:
                found = _moe_layer(model, prefix, hidden)
                if found is not None:
                    moe[prefix] = found
        if moe:
            return candidate, layers, moe
    return family, layers, {}


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


def _experts_groups(model, prefix, moe):
    """One ``moe_ffn`` group per block of routed experts and one group per shared expert of a layer: of kind
    ``shared_ffn`` when the config sizes the shared experts on their own (``shared_expert_intermediate_size``),
    else ``moe_ffn``, so that they keep as many neurons as the experts the config derives them from."""
    config = getattr(model, "config", None)
    shared_kind = "shared_ffn" if hasattr(config, "shared_expert_intermediate_size") else "moe_ffn"
    groups = []
    for name in moe.experts:
        size = layer_spec(model.get_submodule(name)).size(INNER)
        groups.append(ChannelGroup(name=f"{name}.neurons", size=size,
                                   members=[_member(name, INNER, [[i] for i in range(size)])], kind="moe_ffn"))
    for ups, down in moe.shared:
        size = layer_spec(model.get_submodule(down)).size(INPUT)
        per_unit = [[i] for i in range(size)]
        members = [_member(up, OUTPUT, per_unit) for up in ups] + [_member(down, INPUT, per_unit)]
        groups.append(ChannelGroup(name=f"{down.rpartition('.')[0]}.ffn", size=size, members=members,
                                   kind=shared_kind))
    return groups


def _moe_hidden_members(moe, per_unit, hidden):
    members = []
    for name in moe.experts:
        members += [_member(name, INPUT, per_unit), _member(name, OUTPUT, per_unit)]
    for name, is_linear in moe.routers:
        members.append(_member(name, INPUT, per_unit) if is_linear else
                       Member(f"{name}.weight", OUTPUT, list(range(hidden)), list(range(hidden)), axis=1))
    for ups, down in moe.shared:
        members += [_member(up, INPUT, per_unit) for up in ups] + [_member(down, OUTPUT, per_unit)]
    members += [_member(name, INPUT, per_unit) for name in moe.gates]
    return members


def _hidden_group(model, family, layers, hidden, moe=None, scan=True):
    """The residual-stream group, or a protected one naming what could not be matched by name. ``scan=False``:
    only the members the family rules name in ``layers`` (the rest is for the dependency graph to confirm)."""
    per_unit = [[i] for i in range(hidden)]
    members, unknown = [], []
    covered = set()
    names = {name for name, _ in model.named_modules()}
    moe = moe or {}
    for prefix in [*layers, *moe]:
        ffn = () if prefix in moe else family.ffn_inputs()
        for name in (*family.attention_inputs(), *ffn):
            members.append(_member(prefix + name, INPUT, per_unit))
        members.append(_member(prefix + family.o, OUTPUT, per_unit))
        if prefix in moe:
            members += _moe_hidden_members(moe[prefix], per_unit, hidden)
            covered.update(moe[prefix].names())
            covered.update(f"{name}.weight" for name, _ in moe[prefix].routers)
        else:
            members.append(_member(prefix + family.down, OUTPUT, per_unit))
        for norm in family.norms:
            if prefix + norm in names:
                members.append(_member(prefix + norm, INPUT, per_unit))
        covered.update(prefix + p for p in family.projections() + list(family.norms) if prefix + p in names)
        for name, role, _ in _head_aligned(model, family, prefix):
            covered.add(name)
            if role == OUTPUT and layer_spec(model.get_submodule(name)).size(INPUT) == hidden:
                members.append(_member(name, INPUT, per_unit))
    if not scan:
        return ChannelGroup(name="hidden", size=hidden, members=members, kind="hidden")
    # every block of the layer lists, the family's or not (a hybrid model's linear-attention or state-space
    # blocks): widths inside a block may equal the hidden size by chance
    layer_prefixes = tuple({*layers, *moe, *(_parent(prefix) + "." for prefix in [*layers, *moe])})
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


def _multihead_attention(model, group):
    """The ``nn.MultiheadAttention`` members of ``group`` with more than one head (e.g. an attention-pooling head
    whose width is the residual stream)."""
    return [m.target for m in group.members if m.axis is None
            and isinstance(attention := model.get_submodule(m.target), nn.MultiheadAttention)
            and attention.num_heads > 1]


def _heads_from_graph(model, group, trace):
    """``group``, whose channels are also the heads of an ``nn.MultiheadAttention``, in the units the dependency
    graph gives it (one place in every head), or protected: pruned channel by channel, the heads would lose
    different places and mix."""
    completed = _completed(model, group, trace) if trace is not None else group
    if completed is group:
        return replace(group, protected=f"its channels are the heads of {_multihead_attention(model, group)[0]} "
                                        "(nn.MultiheadAttention), which the dependency graph did not confirm")
    return completed


def _untraced(names):
    """Why layers missing from the dependency graph leave a group unconfirmed."""
    return (f"{', '.join(names[:4])} are not in the traced dependency graph: they did not run on the sample inputs "
            "(inputs that exercise them let the graph confirm the rest), ran without autograd (under torch.no_grad() "
            "in forward(): the graph follows gradients) or are of a type the graph does not follow (transformers' "
            "Conv1D)")


def complete_from_graph(model, group, traced):
    """``group`` (the residual stream found by name) with the members the dependency graph ``traced`` adds, when
    the graph agrees with it; otherwise ``group`` unchanged.

    The graph follows the stream into layers the family rules do not name (a cross-attention, extra norms, a
    layer scale, a gate). It is trusted only where it confirms the rules: the traced groups that share a member
    with ``group`` must be prunable, agree on one unit for each channel (no concatenation or reordering; copies
    side by side, as a fold of tokens into channels makes, are allowed; units of several channels, as attention
    heads that must lose the same places make, are kept), and together hold every layer the rules found (a bare
    parameter that forward() never reads, such as an unused mask token, is not traced and keeps the rules' word).
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
    keys = [{key(m) for m in g.members} for g in traced]
    reached, hit = set(ours), set()
    while True:  # a traced group that shares a tensor with one already reached (a tied weight) is reached too
        more = {i for i, k in enumerate(keys) if i not in hit and reached & k}
        if not more:
            break
        hit |= more
        reached.update(*(keys[i] for i in more))
    touching = [traced[i] for i in sorted(hit)]
    if not touching:
        return _unconfirmed(group, "the dependency graph does not reach it")
    blocked = next((g for g in touching if g.protected), None)
    if blocked is not None:
        return _unconfirmed(group, f"the dependency graph protects it with {blocked.name} ({blocked.protected})")
    wider = next((g for g in touching if g.size > group.size), None)
    if wider is not None:
        return _unconfirmed(group, f"the dependency graph joins its channels with others in {wider.name}, a group "
                                   f"of {wider.size} (a concatenation)")
    if any(g.size != touching[0].size or group.size % g.size for g in touching):
        return _unconfirmed(group, "the dependency graph cuts its channels into groups of different sizes")
    found = {key(m): m for g in touching for m in g.members}
    modules = {key(m): m.target for m in group.members if m.axis is None}  # an unused bare parameter is untraced
    untraced = sorted({target for k, target in modules.items() if k not in found})
    if untraced:
        return replace(group, protected="; ".join(filter(None, (group.protected, _untraced(untraced)))))
    unit_of = _unit_of_channel(found.values(), group.size)
    if unit_of is None:
        return _unconfirmed(group, "the dependency graph reaches its channels at other places too (a concatenation "
                                   "or a reordering)")
    named = {(m.target, m.role) for m in group.members}
    extra = []
    for member in (m for g in touching for m in g.members):  # every module of a tie (one key), not one for them all
        if (member.target, member.role) not in named and (key(member) not in ours or member.axis is None):
            named.add((member.target, member.role))
            extra.append(member)
    logger.info("%s also reaches %s (from the dependency graph).",
                "The residual stream" if group.kind == "hidden" else f"Group {group.name}",
                ", ".join(sorted({m.target for m in extra})[:8]) or "nothing else")
    ours = [Member(m.target, m.role, list(m.idxs), [unit_of[i % group.size] for i in m.idxs], m.axis)
            for m in group.members]
    return replace(group, size=touching[0].size, members=ours + extra, protected=None,
                   unit_channels=group.unit_channels * group.size // touching[0].size)


def _unconfirmed(group, why):
    """``group`` as it was when the graph does not confirm it; a protected one also says ``why``."""
    return replace(group, protected=f"{group.protected}; {why}") if group.protected else group


def _unit_of_channel(members, width):
    """``{channel: unit}`` that every traced member agrees on (channel ``c`` of a ``width``-wide stream, and its
    copies at ``c + width``, ... where a fold of tokens repeats it; several channels per unit where the graph joins
    them, e.g. one place in every attention head), or None if two members disagree."""
    unit_of = {}
    for member in members:
        for idx, root in zip(member.idxs, member.roots):
            if unit_of.setdefault(idx % width, root) != root:
                return None
    return unit_of if len(unit_of) == width else None


def _unnamed_ffn_layers(model, group):
    """The layers with parameters beside an FFN's up projections that the family rules do not name (a depthwise
    convolution between the up and the down projection, an inner norm): the dependency graph must say whether they
    carry the FFN's channels."""
    named = set(group.member_targets())
    parents = {target.rpartition(".")[0] for target in group.member_targets(OUTPUT)}
    unnamed = []
    for parent in sorted(parents):
        for name, child in model.get_submodule(parent).named_children():
            qualified = f"{parent}.{name}" if parent else name
            if qualified not in named and next(child.parameters(), None) is not None:
                unnamed.append(qualified)
    return unnamed


def run_once(trace):
    """``trace`` run at most once: later calls get the same groups (or the same error)."""
    outcome = []

    def traced():
        if not outcome:
            try:
                outcome.append((trace(), None))
            except Exception as exc:  # kept and raised again, so that every caller sees what the first one saw
                outcome.append((None, exc))
        groups, error = outcome[0]
        if error is not None:
            raise error
        return groups

    return traced


def _experts_field(config, dense, family=None):
    """The config field that sizes the routed experts: ``moe_intermediate_size`` where the config has it, else
    the FFN field when no layer is dense (Mixtral sizes its experts with ``intermediate_size``), else None."""
    if hasattr(config, "moe_intermediate_size"):
        return "moe_intermediate_size"
    if not dense:
        return (family.ffn_field if family is not None else "intermediate_size")
    return None


def _stages(model, family, layers):
    """``[(parent, width, {prefix: index})]``: the layers of each stage of a hierarchical model (SegFormer, Swin:
    layers under different parents whose residual streams differ in width), else ``[]`` (one residual stream)."""
    by_parent = {}
    for prefix, position in layers.items():
        by_parent.setdefault(_parent(prefix), {})[prefix] = position
    widths = {parent: {layer_spec(model.get_submodule(prefix + family.o)).size(OUTPUT) for prefix in stage}
              for parent, stage in by_parent.items()}
    if len(by_parent) < 2 or len({frozenset(w) for w in widths.values()}) < 2:
        return []
    if any(len(w) != 1 for w in widths.values()):
        return []  # widths that vary inside a stage: not stages of one width each; the single-stream rules apply
    return [(parent, next(iter(widths[parent])), stage) for parent, stage in by_parent.items()]


def _stage_groups(model, family, stages, prune_hidden, trace):
    """One residual-stream group per stage, each pruned only where the dependency graph confirms it (the stage's
    patch embedding, its downsampling and its final norm are not named by the rules)."""
    groups = []
    for parent, width, stage in stages:
        group = replace(_hidden_group(model, family, stage, width, scan=False), name=f"hidden of {parent}",
                        kind="stage_hidden")
        group.protected = ("hidden-size pruning is off" if not prune_hidden else
                           f"a stage of a hierarchical model ({width} wide): its residual stream is pruned only "
                           f"where the dependency graph confirms it")
        if prune_hidden and trace is not None:
            group = _completed(model, group, trace)
        groups.append(group)
    return groups


def _index(prefix):
    """The layer index at the end of a layer prefix (``model.layers.3.`` -> 3)."""
    return int(prefix.rstrip(".").rpartition(".")[2])


def _sub_models(model):
    """Name prefixes (``"model.vision_tower."``) of the outermost modules with a config of their own: the towers of
    a composite model (a vision tower, a language model, an audio encoder)."""
    own, towers = getattr(model, "config", None), []
    for name, module in model.named_modules():
        config = getattr(module, "config", None)
        # a pretrained sub-model (base_model_prefix), not a block that keeps a copy of the config
        if name and config is not None and config is not own and hasattr(config, "to_dict") \
                and hasattr(module, "base_model_prefix") and not name.startswith(tuple(towers)):
            towers.append(name + ".")
    return towers


def _towers(model, layers):
    """The towers (see :func:`_sub_models`) that hold none of ``layers``."""
    return tuple(t for t in _sub_models(model) if not any(prefix.startswith(t) for prefix in layers))


def _composite_hidden(model, family, layers, hidden, moe, trace):
    """The residual stream of a composite model's tower whose layers the family rules found: what the rules name in
    those layers, completed by the dependency graph alone (another tower and its projections may share the width
    by chance, so no layer is added for its width). Protected, naming them, while layers outside the other towers
    that have the width are missing from the traced graph (not run, or of a type it does not follow): their coupling
    is unknown."""
    group = _hidden_group(model, family, layers, hidden, moe, scan=False)
    group.name = f"hidden ({_parent(next(iter([*layers, *moe])))})"  # which tower's, in what is logged
    group.protected = "a composite model: its residual stream is pruned only where the dependency graph confirms it"
    traced = None if trace is None else traced_or_none(trace, "to complete the residual stream")
    if traced is None:
        return group
    towers, reached = _towers(model, [*layers, *moe]), {m.target for g in traced for m in g.members}
    modules = dict(model.named_modules())
    reached |= {f"{name}.{child}" for name in reached if isinstance(modules.get(name), nn.MultiheadAttention)
                for child in dict(modules[name].named_children())}  # traced as the attention module
    untraced = [name for name, module in modules.items()
                if name not in reached and not name.startswith(towers) and (spec := layer_spec(module)) is not None
                and any(spec.size(role) == hidden for role in spec.roles())]
    if untraced:
        return replace(group, protected=f"{group.protected}; {_untraced(untraced)}")
    return complete_from_graph(model, group, traced)


def is_composite(model):
    """Whether ``model`` is made of several sub-models (multimodal, encoder-decoder): by its config, or by a
    pretrained sub-model inside it (GIT's image encoder beside its text layers, under one config with a hidden
    size)."""
    return _composite(getattr(model, "config", None)) or bool(_sub_models(model))


def tower_config(model, prefixes):
    """``(config, path)``: the config that sizes the layers ``prefixes`` - the model's own (path ``""``), or in a
    composite model that of the tower holding them, with its attribute path in the model's config
    (``"text_config"``, ``"encoder"``; None when the model's config does not hold that object, so saving the model
    would not save it) - or ``(None, None)`` when no config describes them."""
    own = getattr(model, "config", None)
    tower = next((t for t in _sub_models(model) if any(prefix.startswith(t) for prefix in prefixes)), None)
    if tower is None:
        return (None, None) if own is None or _composite(own) else (own, "")
    config = model.get_submodule(tower[:-1]).config
    return config, None if own is None else config_path(own, config)


def config_path(config, target, depth=2):
    """The attribute path (``"text_config"``) from ``config`` to the sub-config object ``target``, or None."""
    for key, value in vars(config).items():
        if value is target:
            return key
        if depth > 1 and hasattr(value, "to_dict") and (inner := config_path(value, target, depth - 1)):
            return f"{key}.{inner}"
    return None


def _composite(config):
    """Whether a model config describes several sub-models (multimodal, encoder-decoder) instead of one stream."""
    return config is not None and not isinstance(getattr(config, "hidden_size", None), int)


def traced_or_none(trace, purpose):
    """The groups of ``trace()``, or None (logged at DEBUG, naming ``purpose``) when the graph cannot be built: what
    it would have confirmed stays protected, for the reason found."""
    from msmodelslim.errors import ModelslimError

    try:
        return trace()
    except ModelslimError as exc:
        logger.debug("No dependency graph %s: %s", purpose, exc)
        return None


def _completed(model, group, trace):
    """:func:`complete_from_graph` with the groups of ``trace()``; ``group`` as it is when tracing fails."""
    traced = traced_or_none(trace, "to complete the residual stream")
    return group if traced is None else complete_from_graph(model, group, traced)


class StructureEngine:
    """Channel groups and attribute patches of a model of a recognised transformer family."""

    def __init__(self, model, family, layers, prune_hidden=True, trace=None, moe=None):
        self.model = model
        self.family = family
        self.layers = layers
        self.moe = moe or {}
        self.groups = []
        self._config, self._config_path = tower_config(model, [*layers, *self.moe])
        trace = run_once(trace) if trace is not None else None
        self._heads = {}  # group index -> (layer prefix, heads, kv_heads, head_dim)
        index = {**layers, **{prefix: _index(prefix) for prefix in self.moe}}
        ordered = sorted(index, key=index.get)
        for prefix in ordered:
            group, geometry = _head_group(model, family, prefix)
            self._heads[len(self.groups)] = (prefix, *geometry)
            self.groups.append(group)
            if prefix in self.moe:
                self.groups.extend(_experts_groups(model, prefix, self.moe[prefix]))
            else:
                group = _ffn_group(model, family, prefix)
                if trace is not None and _unnamed_ffn_layers(model, group):
                    group = _completed(model, group, trace)
                self.groups.append(group)
        hidden = getattr(self._config, "hidden_size", None)
        hidden = hidden if isinstance(hidden, int) else None
        if not hidden and layers:  # no config: the output projection writes the residual stream
            hidden = layer_spec(model.get_submodule(next(iter(layers)) + family.o)).size(OUTPUT)
        self._hidden = hidden
        stages = _stages(model, family, layers) if not self.moe else []
        if stages:
            self.groups.extend(_stage_groups(model, family, stages, prune_hidden, trace))
        elif hidden:
            group = _hidden_group(model, family, layers, hidden, self.moe)
            if not prune_hidden:
                group.protected = "hidden-size pruning is off"
            elif is_composite(model):
                group = _composite_hidden(model, family, layers, hidden, self.moe, trace)
            elif group.protected and trace is not None:
                group = _completed(model, group, trace)
            elif _multihead_attention(model, group):
                group = _heads_from_graph(model, group, trace)
            self.groups.append(group)

    @property
    def engine(self):
        return f"structure:{self.family.name}"

    def tie_keys(self, groups, uniform_layers):
        """For each of ``groups`` (this engine's, in order), the key of the groups it must keep equal unit counts
        with (see :meth:`tied`), or None."""
        return [g.kind if self.tied(g.kind, uniform_layers) else None for g in groups]

    def tied(self, kind, uniform_layers):
        """Whether the groups of ``kind`` keep equal unit counts in every layer: asked for (``uniform_layers``),
        or forced for heads when forward() reads the head count from the shared config."""
        if kind == "heads" and self.family.heads_in_config:
            return True
        return uniform_layers and kind in ("heads", "ffn", "moe_ffn", "shared_ffn")

    def patches(self, removed):
        """``(module patches, config fields, notes)`` that make forward() agree with the pruned shapes; ``notes``
        say why the config cannot describe them when it cannot (its fields are then left out)."""
        patches, kept = self._module_patches(removed)
        if self._config is None or self._config_path is None:
            pruned = any(removed.values()) and getattr(self.model, "config", None) is not None
            return patches, {}, [f"no config that the model saves sizes the layers of {self.family.name}"] * pruned
        fields, notes = self._config_changes(kept)
        prefix = f"{self._config_path}." if self._config_path else ""
        where = f"{self._config_path}: " if self._config_path else ""
        return patches, {prefix + key: value for key, value in fields.items()}, [where + note for note in notes]

    def _module_patches(self, removed):
        """``(patches, {group kind: {channels kept per group}})``; heads as head counts, and ``kv_heads``."""
        family, patches = self.family, {}
        kept = {kind: set() for kind in ("heads", "kv_heads", "ffn", "moe_ffn", "shared_ffn", "hidden")}
        for g, group in enumerate(self.groups):
            count = group.size - len(removed.get(g, ()))
            if group.kind == "heads":
                prefix, heads, kv_heads, head_dim = self._heads[g]
                new_heads = heads // kv_heads * count
                kept["heads"].add(new_heads)
                kept["kv_heads"].add(count)
                values = {"heads": new_heads, "kv_heads": count, "q_channels": new_heads * head_dim}
                attrs = {attr: values[what] for attr, what in family.head_attrs}
                if attrs and g in removed:
                    patches[prefix + family.attention] = attrs
            elif group.kind in kept:
                kept[group.kind].add(count * group.unit_channels)
        hidden_kept = next(iter(kept["hidden"]), self._hidden)
        if hidden_kept != self._hidden:
            for moe in self.moe.values():  # routers that reshape their input to the hidden size they were built with
                for name, _ in moe.routers:
                    attrs = {attr: hidden_kept for attr in ("hidden_dim", "hidden_size")
                             if getattr(self.model.get_submodule(name), attr, None) == self._hidden}
                    if attrs:
                        patches[name] = attrs
        return patches, kept

    def _config_changes(self, kept):
        """``(config fields, notes)`` for the unit counts ``kept`` (see :meth:`_module_patches`): the fields that
        change, or none and why when the config cannot describe the pruned layers."""
        family, config = self.family, self._config
        differing = [what for what, kind in (("heads", "heads"), ("key/value heads", "kv_heads"),
                                             ("FFN neurons", "ffn"), ("neurons per expert", "moe_ffn"),
                                             ("shared-expert neurons", "shared_ffn")) if len(kept[kind]) > 1]
        if differing:
            return {}, [f"the layers keep different numbers of {' and '.join(differing)}"]
        one = {kind: next(iter(values)) for kind, values in kept.items() if values}
        fields = {}
        if "moe_ffn" in one:
            field = _experts_field(config, dense="ffn" in one, family=family) or "moe_intermediate_size"
            fields[field] = one["moe_ffn"]
        if "shared_ffn" in one and getattr(config, "n_shared_experts", None) in (None, 1):
            fields["shared_expert_intermediate_size"] = one["shared_ffn"]
        if "heads" in one:
            fields[family.heads_field] = one["heads"]
        if family.kv_field and "kv_heads" in one:
            fields[family.kv_field] = one["kv_heads"]
        if "ffn" in one:
            fields[family.ffn_field] = one["ffn"]
        hidden = one.get("hidden", self._hidden)
        if hidden != self._hidden:
            fields["hidden_size"] = hidden
        _, heads, _, head_dim = next(iter(self._heads.values()), (None, None, None, None))
        if family.explicit_head_dim and hidden != self._hidden:
            fields["head_dim"] = head_dim
        elif not family.explicit_head_dim and head_dim and heads * head_dim == self._hidden \
                and fields.get(family.heads_field, heads) * head_dim != hidden:
            # the config derives the head size as hidden_size / heads: it cannot describe heads cut apart from it
            note = (f"{fields.get(family.heads_field, heads)} heads of {head_dim} channels beside hidden_size "
                    f"{hidden}, and the config has no head size of its own")
            if not family.heads_in_config:
                return {}, [note]
            changed, notes = _config_fields(config, fields)  # forward() reads them: set, though a rebuild cannot
            return changed, notes + [note]
        return _config_fields(config, fields)


def _config_fields(config, fields):
    """``(fields that differ from config, notes)``; no field, and a note saying why, when the config cannot
    describe them all (a field it lacks is skipped; one it holds per layer, as heterogeneous configs do, or
    rejects leaves every field out)."""
    changed = {}
    for key, value in fields.items():
        try:
            current = getattr(config, key)
        except AttributeError:
            continue
        except Exception as exc:  # e.g. transformers' AmbiguousGlobalPerLayerAttributeError
            return {}, [f"{key}: {type(exc).__name__}"]
        if current != value:
            changed[key] = value
    refused = _config_refusal(config, changed) if changed else None
    return ({}, [refused]) if refused else (changed, [])


def _config_refusal(config, fields):
    """Why the config class rejects ``fields`` (transformers validates e.g. hidden_size % heads), or None."""
    try:
        type(config)(**{**config.to_dict(), **fields})
    except Exception as exc:  # transformers raises several types from its validators
        return str(exc).splitlines()[-1].strip() or type(exc).__name__
    return None


def log_config_notes(notes):
    """One INFO line per reason the model config cannot describe the pruned shapes."""
    for note in dict.fromkeys(notes):
        logger.info("The model config cannot describe the pruned shapes (%s); rebuild the model from the desc "
                    "(prune_by_desc) rather than from_pretrained.", note)


def _uniform(values, field, what):
    """``(value, where)`` when every layer agrees on ``values``, else ``(None, why the field cannot describe it)``."""
    if any(value is None for value in values):
        return None, f"the number of {what} cannot be read from the layers"
    distinct = sorted(set(values))
    if len(distinct) == 1:
        return distinct[0], f"every layer has {distinct[0]} {what}"
    return None, f"the layers have different numbers of {what} ({distinct}), so config.{field} cannot describe them"


def _attention_sizes(model, family, prefix):
    """``(heads, kv_heads, hidden, head_dim)`` of one layer as its tensors are now."""
    head_dim = head_size(model, family, prefix)
    q_out, k_out = _attention_widths(model, family, prefix)
    hidden = layer_spec(model.get_submodule(prefix + family.o)).size(OUTPUT)  # o writes the residual stream
    return _per_head(q_out, head_dim), _per_head(k_out, head_dim), hidden, head_dim


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
    family, layers, moe = detect_layers(model)
    if family is None:
        return implied
    sizes = [_attention_sizes(model, family, prefix) for prefix in [*layers, *moe]]
    columns = dict(zip(("heads", "kv", "hidden", "head_dim"), zip(*sizes)))
    implied[family.heads_field] = _uniform(columns["heads"], family.heads_field, "attention heads")
    if family.kv_field:
        implied[family.kv_field] = _uniform(columns["kv"], family.kv_field, "key/value heads")
    if layers:
        ffn = [layer_spec(model.get_submodule(prefix + family.down)).size(INPUT) for prefix in layers]
        implied[family.ffn_field] = _uniform(ffn, family.ffn_field, "FFN neurons")
    routed = [layer_spec(model.get_submodule(name)).size(INNER) for part in moe.values() for name in part.experts
              if name.rpartition(".")[2] == "experts"]
    field = _experts_field(getattr(model, "config", None), dense=bool(layers), family=family)
    if routed and field:
        implied[field] = _uniform(routed, field, "neurons per expert")
    shared = [layer_spec(model.get_submodule(down)).size(INPUT) for part in moe.values() for _, down in part.shared]
    if shared:
        implied["shared_expert_intermediate_size"] = _uniform(shared, "shared_expert_intermediate_size",
                                                              "neurons of the shared experts")
    implied["hidden_size"] = _uniform(columns["hidden"], "hidden_size", "hidden channels")
    if family.explicit_head_dim:
        implied["head_dim"] = _uniform(columns["head_dim"], "head_dim", "channels per head")
    return implied


def detect_towers(model, family, layers, moe):
    """``[(family, layers, moe)]``, one per tower of a composite model whose layers a family's rules find: the
    ``layers`` and ``moe`` found first (:func:`detect_layers`) split by tower (an encoder and a decoder of one
    family each keep their own residual stream), then the other towers' own families (a vision tower beside the
    language model). A model that is not composite is one tower."""
    if not is_composite(model):
        return [(family, layers, moe)]
    towers = _sub_models(model)
    split = {}
    for prefix in [*layers, *moe]:
        tower = next((t for t in towers if prefix.startswith(t)), "")
        found_layers, found_moe = split.setdefault(tower, ({}, {}))
        if prefix in moe:
            found_moe[prefix] = moe[prefix]
        else:
            found_layers[prefix] = layers[prefix]
    found = [(family, found_layers, found_moe) for found_layers, found_moe in split.values()]
    names = [name for name, _ in model.named_modules()]
    for tower in _towers(model, [*layers, *moe]):
        model_type = getattr(model.get_submodule(tower[:-1]).config, "model_type", None)
        other, tower_layers = families.detect_family([n for n in names if n.startswith(tower)],
                                                     model_type if isinstance(model_type, str) else None)
        if other is not None:
            found.append((other, tower_layers, {}))
    return found


def tower_groups(model, engines, traced):
    """The groups of dependency graph ``traced`` that lie in the towers of a composite model no family's rules
    describe (a CLIP-like vision tower beside a BERT text model): those holding a layer of such a tower and no
    layer of the ``engines``' groups."""
    covered = {target for engine in engines for g in engine.groups for target in g.member_targets()}
    towers = _towers(model, [prefix for engine in engines for prefix in [*engine.layers, *engine.moe]])
    return [g for g in traced if not covered & set(g.member_targets())
            and any(target.startswith(towers) for target in g.member_targets())]


class CompositeEngine:
    """The :class:`StructureEngine` of each tower of a composite model, side by side, and the dependency graph's
    groups of towers no family describes (``generic``): the groups in that order, each tower's heads, neurons and
    residual stream tied within that tower only. Towers whose streams the model joins (two backbones' features
    summed, or one attending to the other) find the same group: it is listed, planned and counted once, and its
    removal reaches both towers' patches."""

    def __init__(self, engines, generic=()):
        self.engines = engines
        self.groups, self._where = [], []  # _where[n][local index] = index in self.groups
        first = {}
        for engine in engines:
            where = []
            for group in engine.groups:
                key = _members_key(group)
                if key not in first:
                    first[key] = len(self.groups)
                    self.groups.append(group)
                where.append(first[key])
            self._where.append(where)
        self._generic = len(generic)
        self.groups += list(generic)

    @property
    def engine(self):
        return "structure:" + ",".join(e.family.name for e in self.engines)

    def tie_keys(self, groups, uniform_layers):
        keys = [None] * len(self.groups)
        for n, (engine, where) in enumerate(zip(self.engines, self._where)):
            found = engine.tie_keys([groups[g] for g in where], uniform_layers)
            for g, key in zip(where, found):
                if keys[g] is None and key is not None:
                    keys[g] = (n, key)
        return keys

    def patches(self, removed):
        patches, fields, notes = {}, {}, []
        for engine, where in zip(self.engines, self._where):
            found, config, why = engine.patches({local: removed[g] for local, g in enumerate(where) if g in removed})
            patches.update(found)
            fields.update(config)
            notes += why
        first_generic = len(self.groups) - self._generic
        if self._generic and any(g >= first_generic for g in removed if removed[g]):
            notes.append("the towers pruned from the dependency graph have no config fields msmodelslim sets")
        return patches, fields, notes


def _members_key(group):
    """What ``group`` slices: its members' targets, roles, axes and channels."""
    return frozenset((m.target, m.role, m.axis, tuple(m.idxs)) for m in group.members)
