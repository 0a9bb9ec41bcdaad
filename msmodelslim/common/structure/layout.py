"""Which axis of which tensor belongs to which coupled group, for a model of a described family against a bigger
checkpoint of the same family. Framework-free: shapes, names and index lists only.

From the family description (:mod:`.families`) every layer gets a :class:`HeadUnits` group (its attention heads)
and a :class:`ChannelUnits` group (its FFN neurons); the model gets one hidden :class:`ChannelUnits` group. Each
claimed axis records its :class:`Owner`: the group, the *view* of the group the axis shows, and whether it is a
projection's input or output axis. Views:

* ``q`` / ``kv``: query channels (q rows, output-projection columns) / key-value channels (k and v rows);
* ``qkv``: the rows of a fused ``[q | k | v]`` projection, whose parts have the *checkpoint's* widths;
* ``ffn`` / ``gate_up``: FFN neurons / the rows of a fused ``[gate | up]`` projection (each neuron twice);
* ``hidden``: channels of the residual stream.

Once the kept units are chosen (``keep``), ``group.index(view)`` is the index to select along an axis of that view,
so coupled tensors are always sliced with the same indices. A backend supplies three small functions: which
``(key, axis)`` of a projection hold its input or output channels, a layer's head size, and the axes that may
hold hidden channels.
"""
from dataclasses import dataclass, field

Q, KV, QKV, FFN, GATE_UP, HIDDEN = "q", "kv", "qkv", "ffn", "gate_up", "hidden"
IN, OUT = "in", "out"


def query_channels(heads, head_dim):
    """The channels of query (or key/value) heads ``heads``, in order."""
    return [h * head_dim + c for h in heads for c in range(head_dim)]


def head_units(heads, kv_heads, head_dim):
    """Per unit (a key/value head and the query heads sharing it): ``(query channels, key/value channels)``."""
    rep = heads // kv_heads
    return [(query_channels(range(u * rep, (u + 1) * rep), head_dim), query_channels([u], head_dim))
            for u in range(kv_heads)]


def fused_qkv_rows(q, kv, q_width, kv_width):
    """Rows of a fused ``[q | k | v]`` projection for query channels ``q`` and key/value channels ``kv``."""
    return list(q) + [q_width + i for i in kv] + [q_width + kv_width + i for i in kv]


def fused_gate_up_rows(neurons, width):
    """Rows of a fused ``[gate | up]`` projection (``width`` neurons each) for ``neurons``."""
    return list(neurons) + [width + i for i in neurons]


@dataclass(frozen=True)
class Owner:
    """The group an axis belongs to, the view it shows and the projection role (``in``/``out``, None: hidden)."""

    group: object
    view: str
    role: str = None


@dataclass
class HeadUnits:
    """Attention heads of one layer; a unit is a key/value head with its query heads."""

    name: str
    head_dim: int  # 0: unknown (allowed only when the heads do not change)
    big: tuple  # (heads, kv_heads) of the checkpoint
    small: tuple  # (heads, kv_heads) of the model
    keep: list = field(default_factory=list)  # [(kv group, [query heads of the checkpoint])], ascending

    @property
    def changes(self):
        return self.big != self.small

    def q_index(self):
        return query_channels([h for _, heads in self.keep for h in heads], self.head_dim)

    def kv_index(self):
        return query_channels([g for g, _ in self.keep], self.head_dim)

    def parts(self, view, total):
        """``[(view, width)]`` of consecutive parts along an axis of ``view`` with ``total`` channels."""
        if view != QKV:
            return [(view, total)]
        q_width, kv_width = self.big[0] * self.head_dim, self.big[1] * self.head_dim
        return [(Q, q_width), (KV, kv_width), (KV, kv_width)]

    def index(self, view):
        """Kept channel indices along an axis of ``view``."""
        if view == Q:
            return self.q_index()
        if view == KV:
            return self.kv_index()
        return fused_qkv_rows(self.q_index(), self.kv_index(), self.big[0] * self.head_dim,
                              self.big[1] * self.head_dim)


@dataclass
class ChannelUnits:
    """FFN neurons of one layer, or the hidden channels of the model."""

    name: str
    big: int
    small: int
    keep: list = field(default_factory=list)

    @property
    def changes(self):
        return self.big != self.small

    def parts(self, view, total):
        """``[(view, width)]`` of consecutive parts along an axis of ``view`` with ``total`` channels."""
        return [(FFN, self.big), (FFN, self.big)] if view == GATE_UP else [(view, total)]

    def index(self, view):
        """Kept channel indices along an axis of ``view``."""
        return fused_gate_up_rows(self.keep, self.big) if view == GATE_UP else list(self.keep)


@dataclass
class Layout:
    """The groups of a model and, per ``(key, axis)``, its :class:`Owner`."""

    heads: list
    ffn: list
    hidden: ChannelUnits
    axes: dict
    layer_of_group: dict  # group name -> layer prefix

    def groups(self):
        return [*self.heads, *self.ffn, self.hidden]


def named_axes(family, shapes):
    """``axes_of(path, role)`` for backends that only know parameter names and shapes (MindSpore): a
    projection's ``weight`` is ``[out, in]`` (``[in, out]`` for a Conv1D family), its ``bias`` holds outputs."""
    out_axis, in_axis = (1, 0) if family.conv1d else (0, 1)

    def axes_of(path, role):
        found = [(f"{path}.weight", out_axis if role == OUT else in_axis)]
        if role == OUT and f"{path}.bias" in shapes:
            found.append((f"{path}.bias", 0))
        return found

    return axes_of


def named_hidden_candidates(family, shapes):
    """``hidden_candidates(hidden)`` for name-only backends: the last axis of any tensor of the hidden size, and
    the output axis of a 2-D ``weight`` (a dense layer writing the residual stream)."""
    out_axis = 1 if family.conv1d else 0

    def candidates(hidden):
        found = []
        for key, shape in shapes.items():
            if len(shape) == 2 and key.endswith(".weight") and shape[out_axis] == hidden:
                found.append((key, out_axis))
            if shape and shape[-1] == hidden and (key, len(shape) - 1) not in found:
                found.append((key, len(shape) - 1))
        return found

    return candidates


def _size(shape_of, key, axis):
    shape = shape_of(key)
    return shape[axis] if shape is not None and len(shape) > axis else None


class _Builder:
    def __init__(self, family, small_shapes, big_shape_of, axes_of):
        self.family = family
        self.small_shapes = small_shapes
        self.big_shape_of = big_shape_of
        self.axes_of = axes_of
        self.axes = {}

    def sizes(self, path, role):
        """``(model size, checkpoint size or 0)`` along a projection's ``role`` axis."""
        key, axis = self.axes_of(path, role)[0]
        return self.small_shapes[key][axis], _size(self.big_shape_of, key, axis) or 0

    def claim(self, path, role, group, view):
        for key, axis in self.axes_of(path, role):
            if key in self.small_shapes:
                self.axes[(key, axis)] = Owner(group, view, role)

    def heads(self, prefix, head_dim):
        family = self.family
        small_q, big_q = self.sizes(prefix + family.o, IN)  # the output projection reads the query channels
        if family.qkv:
            small_total, big_total = self.sizes(prefix + family.qkv, OUT)
            small, big = (small_q, (small_total - small_q) // 2), (big_q, (big_total - big_q) // 2)
        else:
            small_kv, big_kv = self.sizes(prefix + family.k, OUT)
            small, big = (small_q, small_kv), (big_q, big_kv)
        if not head_dim and big == small:
            group = HeadUnits(f"{prefix}heads", 0, (0, 0), (0, 0))  # size unknown, but nothing to choose
        elif not head_dim:
            raise ValueError(f"Layer '{prefix}': the number of attention heads changes ({big[0]} -> {small[0]} query "
                             f"channels) but the head size is unknown: give '{prefix}{family.attention}' an attribute "
                             "'head_dim' (or 'attention_head_size', or 'num_attention_heads').")
        else:
            group = HeadUnits(f"{prefix}heads", head_dim, tuple(w // head_dim for w in big),
                              tuple(w // head_dim for w in small))
            _check_heads(group, big, small, prefix)
        if family.qkv:
            self.claim(prefix + family.qkv, OUT, group, QKV)
        else:
            self.claim(prefix + family.q, OUT, group, Q)
            self.claim(prefix + family.k, OUT, group, KV)
            self.claim(prefix + family.v, OUT, group, KV)
        self.claim(prefix + family.o, IN, group, Q)
        return group

    def ffn(self, prefix):
        family = self.family
        small, big = self.sizes(prefix + family.down, IN)
        group = ChannelUnits(f"{prefix}ffn", big, small)
        for up in family.up:
            self.claim(prefix + up, OUT, group, FFN)
        if family.gate_up:
            self.claim(prefix + family.gate_up, OUT, group, GATE_UP)
        self.claim(prefix + family.down, IN, group, FFN)
        return group

    def hidden(self, hidden_small, candidates):
        group = ChannelUnits("hidden", 0, hidden_small)
        for key, axis in candidates:
            big = _size(self.big_shape_of, key, axis)
            if (key, axis) in self.axes or key not in self.small_shapes or big is None:
                continue
            group.big = group.big or big
            if big == group.big:
                self.axes[(key, axis)] = Owner(group, HIDDEN)
        group.big = group.big or hidden_small
        return group


def _check_heads(group, big, small, prefix):
    (big_heads, big_kv), (small_heads, small_kv) = group.big, group.small
    whole = all(width % group.head_dim == 0 for width in (*big, *small))
    if not whole or not big_kv or big_heads % big_kv or not small_kv or small_heads % small_kv:
        raise ValueError(f"Layer '{prefix}': cannot read whole heads of size {group.head_dim} from the checkpoint "
                         f"({big[0]} query / {big[1]} key-value channels) into the model ({small[0]} / {small[1]}).")
    if small_kv > big_kv or small_heads // small_kv > big_heads // big_kv:
        raise ValueError(f"Layer '{prefix}': the model has more heads ({small_heads} query / {small_kv} key-value) "
                         f"than the checkpoint ({big_heads} / {big_kv}).")


def build_layout(family, layers, small_shapes, big_shape_of, axes_of, head_dim_of, hidden_candidates):
    """The :class:`Layout` of a model of ``family`` with layer prefixes ``layers`` and parameter shapes
    ``small_shapes`` (``{key: shape}``, in the model's order) against checkpoint shapes ``big_shape_of(key)``
    (None when absent).

    ``axes_of(path, role)`` gives the ``[(key, axis)]`` of projection ``path`` holding its ``in``/``out`` channels
    (the first one gives the size), ``head_dim_of(prefix)`` a layer's head size or None, and
    ``hidden_candidates(hidden)`` the ``(key, axis)`` that may hold the hidden channels, in the model's order.

    Raises:
        ValueError: heads change but their size is unknown, or the head counts do not fit.
    """
    builder = _Builder(family, small_shapes, big_shape_of, axes_of)
    heads, ffns, layer_of = [], [], {}
    for prefix in layers:
        group = builder.heads(prefix, head_dim_of(prefix))
        ffn = builder.ffn(prefix)
        heads.append(group)
        ffns.append(ffn)
        layer_of[group.name] = layer_of[ffn.name] = prefix
    first = next(iter(layers))
    hidden_small = builder.sizes(first + family.o, OUT)[0]  # the output projection writes the residual stream
    hidden = builder.hidden(hidden_small, hidden_candidates(hidden_small))
    return Layout(heads=heads, ffn=ffns, hidden=hidden, axes=builder.axes, layer_of_group=layer_of)
