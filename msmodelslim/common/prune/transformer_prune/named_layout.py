"""Transformer blocks described by parameter names and shapes only, for backends without module types.

A MindSpore ``nn.Cell`` exposes ``parameters_dict()`` (names and shapes) but no layer kinds that the PyTorch
structure rules could read, so a family is described here as data: the names of its projections relative to a
layer prefix (``encoder.layer.3.``). Dense weights are ``[out, in]`` in MindSpore (``nn.Dense``) as in PyTorch
(``nn.Linear``).

Coupled axes, in the order the PyTorch backend claims them (so the scores are summed in the same order):

* heads: rows (weight and bias) of q (view ``q``), k and v (view ``kv``), and the columns of the attention output
  projection o (view ``q``);
* FFN neurons: rows (weight and bias) of each up projection and the columns of the down projection;
* hidden channels: every other axis whose size is the small model's hidden size: the last axis of any tensor,
  and the rows of a 2-D ``weight`` (a dense layer writing the residual stream).

To add a family: add a :class:`NamedFamily` to ``NAMED_FAMILIES`` with its projection names.
"""
import re
from dataclasses import dataclass, field

Q, KV, FFN, HIDDEN = "q", "kv", "ffn", "hidden"


@dataclass(frozen=True)
class NamedFamily:
    """Projection names of one family, relative to a layer prefix; ``attention`` names the sub-module that
    carries the head size attributes."""

    name: str
    q: str
    k: str
    v: str
    o: str
    up: tuple
    down: str
    attention: str
    weight: str = "weight"
    bias: str = "bias"

    def projections(self):
        return [self.q, self.k, self.v, self.o, *self.up, self.down]


NAMED_FAMILIES = (
    NamedFamily("bert", q="attention.self.query", k="attention.self.key", v="attention.self.value",
                o="attention.output.dense", up=("intermediate.dense",), down="output.dense",
                attention="attention.self"),
)

_LAYER = re.compile(r"^(?P<prefix>(?:.+\.)?(?P<index>\d+)\.)")


@dataclass
class HeadUnits:
    """Attention heads of one layer; a unit is a key/value head with its query heads (BERT: one each)."""

    name: str
    head_dim: int  # 0: unknown (allowed only when the heads do not change)
    big: tuple  # (heads, kv_heads)
    small: tuple
    keep: list = field(default_factory=list)  # [(kv group, [query heads of the big model])], ascending

    @property
    def changes(self):
        return self.big != self.small

    def index(self, view):
        """Kept channel indices along the axes of ``view`` (``q`` or ``kv``)."""
        if view == Q:
            return [h * self.head_dim + c for _, heads in self.keep for h in heads for c in range(self.head_dim)]
        return [g * self.head_dim + c for g, _ in self.keep for c in range(self.head_dim)]


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

    def index(self, view):
        return list(self.keep)


@dataclass
class NamedLayout:
    """The groups of a model and, per ``(key, axis)``, the ``(group, view)`` it belongs to."""

    heads: list
    ffn: list
    hidden: ChannelUnits
    axes: dict
    layer_of_group: dict  # group name -> layer prefix

    def groups(self):
        return [*self.heads, *self.ffn, self.hidden]


def detect_named_family(keys):
    """The :class:`NamedFamily` whose projections every layer of ``keys`` holds, and the layer prefixes in
    index order; ``(None, [])`` when none fits."""
    present = set(keys)
    for family in NAMED_FAMILIES:
        prefixes = {}
        for key in keys:
            match = _LAYER.match(key)
            if match and all(f"{match['prefix']}{p}.{family.weight}" in present for p in family.projections()):
                prefixes[match["prefix"]] = int(match["index"])
        if prefixes:
            return family, sorted(prefixes, key=prefixes.get)
    return None, []


def _rows(family, key_stem, shapes):
    """``(key, 0)`` of a projection's weight and (when present) bias."""
    axes = [(f"{key_stem}.{family.weight}", 0)]
    if f"{key_stem}.{family.bias}" in shapes:
        axes.append((f"{key_stem}.{family.bias}", 0))
    return axes


def _size(shape_of, key, axis):
    shape = shape_of(key)
    return shape[axis] if shape is not None and len(shape) > axis else None


def _heads(family, prefix, small_shapes, big_shape_of, head_dim):
    q_key, k_key = f"{prefix}{family.q}.{family.weight}", f"{prefix}{family.k}.{family.weight}"
    big = (_size(big_shape_of, q_key, 0) or 0, _size(big_shape_of, k_key, 0) or 0)
    small = (small_shapes[q_key][0], small_shapes[k_key][0])
    if not head_dim and big == small:
        return HeadUnits(f"{prefix}heads", 0, (0, 0), (0, 0))  # size unknown, but nothing to choose
    if not head_dim:
        raise ValueError(f"Layer '{prefix}': the number of attention heads changes ({big[0]} -> {small[0]} query "
                         f"channels) but the head size is unknown: give '{prefix}{family.attention}' an attribute "
                         "'attention_head_size' (or 'head_dim', or 'num_attention_heads').")
    group = HeadUnits(f"{prefix}heads", head_dim, (big[0] // head_dim, big[1] // head_dim),
                      (small[0] // head_dim, small[1] // head_dim))
    _check_heads(group, big, small, prefix)
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


def build_named_layout(family, layers, small_shapes, big_shape_of, head_dim_of):
    """The :class:`NamedLayout` of a model with parameter shapes ``small_shapes`` (``{key: shape}``, in the
    model's order) against checkpoint shapes ``big_shape_of(key)`` (None when absent); ``head_dim_of(prefix)``
    gives a layer's head size or None.

    Raises:
        ValueError: heads change but their size is unknown, or the head counts do not fit.
    """
    axes, heads, ffns, layer_of = {}, [], [], {}
    for prefix in layers:
        group = _heads(family, prefix, small_shapes, big_shape_of, head_dim_of(prefix))
        for stem, view in ((family.q, Q), (family.k, KV), (family.v, KV)):
            for axis in _rows(family, prefix + stem, small_shapes):
                axes[axis] = (group, view)
        axes[(f"{prefix}{family.o}.{family.weight}", 1)] = (group, Q)
        down_key = f"{prefix}{family.down}.{family.weight}"
        ffn = ChannelUnits(f"{prefix}ffn", _size(big_shape_of, down_key, 1) or 0, small_shapes[down_key][1])
        for up in family.up:
            for axis in _rows(family, prefix + up, small_shapes):
                axes[axis] = (ffn, FFN)
        axes[(down_key, 1)] = (ffn, FFN)
        heads.append(group)
        ffns.append(ffn)
        layer_of[group.name] = layer_of[ffn.name] = prefix
    hidden_small = small_shapes[f"{layers[0]}{family.o}.{family.weight}"][0]
    hidden = ChannelUnits("hidden", 0, hidden_small)
    for key, shape in small_shapes.items():
        for axis in _hidden_axes(key, shape, hidden_small, family):
            big = _size(big_shape_of, key, axis)
            if (key, axis) in axes or big is None:
                continue
            hidden.big = hidden.big or big
            if big == hidden.big:
                axes[(key, axis)] = (hidden, HIDDEN)
    hidden.big = hidden.big or hidden_small
    return NamedLayout(heads=heads, ffn=ffns, hidden=hidden, axes=axes, layer_of_group=layer_of)


def _hidden_axes(key, shape, hidden, family):
    """Axes of a tensor that may hold the hidden channels (see the module docstring)."""
    axes = []
    if len(shape) == 2 and key.endswith("." + family.weight) and shape[0] == hidden:
        axes.append(0)
    if shape and shape[-1] == hidden:
        axes.append(len(shape) - 1)
    return axes
