"""Which axis of which checkpoint tensor belongs to which coupled group, for a recognised transformer family.

For every layer of the small model, the family's structure rules (shared with PruneTorch) say which tensors hold
its attention heads (q, k, v, fused qkv rows and output-projection columns) and its FFN neurons (up/gate rows and
down columns); every other axis whose size is the hidden size belongs to the one hidden group. Each group knows
its size in the checkpoint and in the small model; once the kept units are chosen, it gives the index to select
along each of its axes, so coupled tensors are always sliced with the same indices.
"""
from dataclasses import dataclass, field

from msmodelslim.common.prune.transformer_prune.named_layout import ChannelUnits as ChannelsGroup
from msmodelslim.pytorch.prune.layers import INPUT, OUTPUT, layer_spec
from msmodelslim.pytorch.prune.structure import head_size

Q, KV, QKV, FFN, HIDDEN = "q", "kv", "qkv", "ffn", "hidden"


@dataclass
class HeadsGroup:
    """Attention heads of one layer; a unit is a key/value head with its query heads."""

    name: str
    head_dim: int
    big: tuple  # (heads, kv_heads)
    small: tuple
    fused_width: int = 0  # width of one third of a fused qkv output (0: separate projections)
    keep: list = field(default_factory=list)  # [(kv group, [query heads of the big model])], ascending

    @property
    def changes(self):
        return self.big != self.small

    def q_index(self):
        return [h * self.head_dim + c for _, heads in self.keep for h in heads for c in range(self.head_dim)]

    def kv_index(self):
        return [g * self.head_dim + c for g, _ in self.keep for c in range(self.head_dim)]

    def qkv_index(self):
        q = self.q_index()
        return [offset * self.fused_width + i for offset in range(3) for i in q]

    def index(self, view):
        return {Q: self.q_index, KV: self.kv_index, QKV: self.qkv_index}[view]()


@dataclass
class Layout:
    """The groups of a model and, per ``(key, axis)``, the ``(group, view, role)`` it belongs to."""

    heads: list
    ffn: list
    hidden: ChannelsGroup
    axes: dict  # (key, axis) -> (group, view, role of the layer holding it)
    layer_of_group: dict  # group name -> small layer prefix

    def groups(self):
        return [*self.heads, *self.ffn, *([self.hidden] if self.hidden else [])]


def _param_axes(module_name, module, role):
    """``[(key, axis)]`` of a module's parameters holding ``role``'s channels."""
    spec = layer_spec(module)
    if spec is None or role not in spec.roles():
        return []
    return [(f"{module_name}.{a.tensor}", a.axis % getattr(module, a.tensor).dim())
            for a in spec.roles()[role] if getattr(module, a.tensor, None) is not None]


def hidden_size(model, family, layers):
    """The hidden size: the config's, else the size of the first layer's first normalisation layer."""
    config = getattr(model, "config", None)
    if getattr(config, "hidden_size", None):
        return config.hidden_size
    norm = model.get_submodule(next(iter(layers)) + family.norms[0])
    return layer_spec(norm).size(INPUT)


def build_layout(model, family, layers, big_shape_of):
    """The :class:`Layout` of ``model`` against checkpoint shapes ``big_shape_of(key)`` (None when absent).

    Raises:
        ValueError: the checkpoint's head or hidden sizes are not consistent with the small model.
    """
    modules = dict(model.named_modules())
    small_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    axes, heads, ffns, layer_of = {}, [], [], {}

    def claim(module_path, role, group, view):
        for key, axis in _param_axes(module_path, modules[module_path], role):
            axes[(key, axis)] = (group, view, role)

    hidden_small = hidden_size(model, family, layers)
    hidden_big = None
    for prefix in layers:
        hd = head_size(model, family, prefix)
        if family.qkv:
            key = f"{prefix}{family.qkv}.weight"
            out_axis = _param_axes(prefix + family.qkv, modules[prefix + family.qkv], OUTPUT)[0][1]
            small_w, big_w = small_shapes[key][out_axis] // 3, (_big(big_shape_of, key, out_axis) or 0) // 3
            group = HeadsGroup(f"{prefix}heads", hd, (big_w // hd, big_w // hd) if big_w else (0, 0),
                               (small_w // hd, small_w // hd), fused_width=big_w or 0)
            claim(prefix + family.qkv, OUTPUT, group, QKV)
            claim(prefix + family.o, INPUT, group, Q)
        else:
            q_key, k_key = f"{prefix}{family.q}.weight", f"{prefix}{family.k}.weight"
            q_axis = _param_axes(prefix + family.q, modules[prefix + family.q], OUTPUT)[0][1]
            big_q, big_k = _big(big_shape_of, q_key, q_axis), _big(big_shape_of, k_key, q_axis)
            group = HeadsGroup(f"{prefix}heads", hd, ((big_q or 0) // hd, (big_k or 0) // hd),
                               (small_shapes[q_key][q_axis] // hd, small_shapes[k_key][q_axis] // hd))
            claim(prefix + family.q, OUTPUT, group, Q)
            claim(prefix + family.k, OUTPUT, group, KV)
            claim(prefix + family.v, OUTPUT, group, KV)
            claim(prefix + family.o, INPUT, group, Q)
        _check_heads(group, big_shape_of, prefix, family)
        heads.append(group)
        down = prefix + family.down
        in_axis = _param_axes(down, modules[down], INPUT)[0]
        ffn = ChannelsGroup(f"{prefix}ffn", _big(big_shape_of, *in_axis) or 0, small_shapes[in_axis[0]][in_axis[1]])
        for up in family.up:
            claim(prefix + up, OUTPUT, ffn, FFN)
        claim(down, INPUT, ffn, FFN)
        ffns.append(ffn)
        layer_of[group.name] = layer_of[ffn.name] = prefix
    hidden = ChannelsGroup("hidden", 0, hidden_small)
    candidates = []  # (key, axis) of the residual stream, as in the hidden group of PruneTorch
    for name, module in modules.items():
        spec = layer_spec(module)
        if spec is not None:
            for role in spec.roles():
                if spec.size(role) == hidden_small:
                    candidates += _param_axes(name, module, role)
        else:
            for pname, param in module.named_parameters(recurse=False):
                if param.dim() and param.shape[-1] == hidden_small:
                    candidates.append((f"{name}.{pname}" if name else pname, param.dim() - 1))
    for key, axis in candidates:
        if (key, axis) in axes or key not in small_shapes:
            continue
        big = _big(big_shape_of, key, axis)
        if big is None:
            continue
        if hidden_big is None:
            hidden_big = big
        if big == hidden_big:
            axes[(key, axis)] = (hidden, HIDDEN, None)
    hidden.big = hidden_big or hidden_small
    return Layout(heads=heads, ffn=ffns, hidden=hidden, axes=axes, layer_of_group=layer_of)


def _big(big_shape_of, key, axis):
    shape = big_shape_of(key)
    return shape[axis] if shape is not None and len(shape) > axis else None


def _check_heads(group, big_shape_of, prefix, family):
    (big_heads, big_kv), (small_heads, small_kv) = group.big, group.small
    if not big_heads or not big_kv or big_heads % big_kv or small_kv == 0 or small_heads % small_kv:
        raise ValueError(f"Layer '{prefix}': cannot read whole heads of size {group.head_dim} from the checkpoint "
                         f"({big_heads} query / {big_kv} key-value heads) into the model "
                         f"({small_heads} / {small_kv}).")
    if small_kv > big_kv or small_heads // small_kv > big_heads // big_kv:
        raise ValueError(f"Layer '{prefix}': the model has more heads ({small_heads} query / {small_kv} key-value) "
                         f"than the checkpoint ({big_heads} / {big_kv}).")
