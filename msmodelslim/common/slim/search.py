"""Architecture search under a budget: every uniform architecture (layers, attention heads in whole key-value
groups, hidden size, FFN width) whose size is within the tolerance of the budget, and a spread of them to score.

Framework-free: the backend gives the dense :class:`Architecture`, which axes it may shrink, and ``count(arch)``,
the size of a model of that architecture under the chosen budget kind. Sizes are affine in the layer count and,
for fixed widths, in the FFN width, so three counts per (hidden size, key-value groups) pair solve for the FFN
width that meets the budget; nothing is materialised.
"""
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Architecture:
    """A uniform transformer shape: ``heads`` query heads sharing ``kv_heads`` key-value heads."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int

    def label(self):
        return f"L{self.layers} H{self.hidden} A{self.heads}/{self.kv_heads} F{self.ffn}"

    def to_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class SearchSpace:
    """What may shrink: ``head_dim`` is fixed (whole heads are removed); ``hidden_follows_heads`` when the model
    derives its head size from the hidden size (hidden = heads x head_dim, BERT, GPT-2, OPT); ``prune_hidden``
    False keeps the hidden size (and then, if it follows the heads, the heads)."""

    dense: Architecture
    head_dim: int
    hidden_follows_heads: bool
    prune_hidden: bool = True


@dataclass(frozen=True)
class Candidate:
    architecture: Architecture
    size: int
    fraction: float  # of the dense size


def _aligned_widths(full, align):
    """Multiples of ``align`` up to ``full``, and ``full`` itself (an alignment above an eighth of the width is
    lowered, so that tiny models still have choices)."""
    step = max(1, min(align, full // 8 or 1))
    return sorted(set(range(step, full + 1, step)) | {full})


def _shapes(space, align):
    """``(hidden, heads, kv_heads)`` choices of the space."""
    dense = space.dense
    rep = dense.heads // dense.kv_heads
    groups = range(1, dense.kv_heads + 1)
    if space.hidden_follows_heads:
        if not space.prune_hidden:
            return [(dense.hidden, dense.heads, dense.kv_heads)]
        return [(g * rep * space.head_dim, g * rep, g) for g in groups]
    hiddens = _aligned_widths(dense.hidden, align) if space.prune_hidden else [dense.hidden]
    return [(h, g * rep, g) for h in hiddens for g in groups]


def candidates(space, count, target, tolerance, align):
    """Every architecture of ``space`` whose ``count`` is within ``tolerance`` x dense of ``target`` x dense, sorted
    by (layers, hidden, heads, ffn); for each shape and depth, the FFN widths that fit (aligned) are tried.

    Returns ``(candidates, smallest)``: the fitting :class:`Candidate` list and the smallest reachable
    :class:`Candidate` (to explain a budget nobody can meet).
    """
    dense = space.dense
    dense_size = count(dense)
    widths = _aligned_widths(dense.ffn, align)
    found, smallest = [], None
    for hidden, heads, kv_heads in _shapes(space, align):
        base = Architecture(1, hidden, heads, kv_heads, dense.ffn)
        one, two = count(base), count(replace(base, layers=2))
        narrow = count(replace(base, ffn=widths[0]))
        per_layer_full = two - one
        per_neuron = (one - narrow) / max(dense.ffn - widths[0], 1)
        fixed = one - per_layer_full  # embeddings, final norm, head
        per_layer_zero_ffn = per_layer_full - per_neuron * dense.ffn
        for layers in range(1, dense.layers + 1):
            size_at = lambda ffn: fixed + layers * (per_layer_zero_ffn + per_neuron * ffn)  # noqa: E731
            low = Candidate(Architecture(layers, hidden, heads, kv_heads, widths[0]), round(size_at(widths[0])), 0)
            if smallest is None or low.size < smallest.size:
                smallest = low
            wanted = (target * dense_size - fixed) / layers - per_layer_zero_ffn
            ideal = wanted / per_neuron if per_neuron else dense.ffn
            for ffn in _nearest(widths, ideal):
                size = round(size_at(ffn))
                if abs(size - target * dense_size) <= tolerance * dense_size:
                    found.append(Candidate(Architecture(layers, hidden, heads, kv_heads, ffn), size,
                                           size / dense_size))
    found.sort(key=lambda c: (c.architecture.layers, c.architecture.hidden, c.architecture.heads,
                              c.architecture.ffn))
    if smallest is not None:
        smallest = replace(smallest, fraction=smallest.size / dense_size)
    return found, smallest


def _nearest(widths, ideal):
    """The aligned widths just below and just above ``ideal`` (clamped to the list)."""
    index = next((i for i, w in enumerate(widths) if w >= ideal), len(widths) - 1)
    return sorted({widths[max(index - 1, 0)], widths[index]})


def spread(found, limit):
    """At most ``limit`` candidates evenly spaced over ``found`` (kept in order), so that shallow-and-wide and
    deep-and-narrow shapes are all scored."""
    if len(found) <= limit:
        return list(found)
    if limit == 1:
        return [found[len(found) // 2]]
    picks = sorted({round(i * (len(found) - 1) / (limit - 1)) for i in range(limit)})
    return [found[i] for i in picks]


def describe_unreachable(budget, smallest, kind):
    """The message for a budget no candidate meets."""
    if smallest is not None and budget < smallest.fraction:
        return (f"budget {budget} ({kind}) is below the smallest reachable architecture, "
                f"{smallest.architecture.label()} with {smallest.size:,} {kind} ({smallest.fraction:.1%} of the "
                f"dense model); raise the budget.")
    return (f"no architecture meets budget {budget} ({kind}) within the tolerance; widen SlimConfig.tolerance "
            f"or lower SlimConfig.align.")

