"""``layer_id_map="auto"`` without a framework: from the block influence of each checkpoint layer (measured by a
backend, ShortGPT's Block Influence: mean over calibration tokens of 1 - cos(block input, block output)), keep as
many layers as the small model has, those of highest influence, in their original order. The same rule as the
PyTorch backend (``msmodelslim.pytorch.prune.transformer_prune.depth``)."""
import re

from msmodelslim.utils.logging import logger


def layer_id(pattern, name):
    """The layer id ``pattern`` (compiled, one capture group) finds in block ``name``, or None."""
    match = pattern.match(name + ".") or pattern.match(name)
    return int(match.group(1)) if match else None


def small_layer_ids(keys, pattern):
    """The layer ids ``pattern`` finds in the parameter names ``keys`` of the small model, sorted.

    Raises:
        ValueError: ``pattern`` finds no layer.
    """
    regex = re.compile(pattern)
    wanted = sorted({int(m.group(1)) for m in map(regex.match, keys) if m})
    if not wanted:
        raise ValueError(f"layer_id_map='auto': pattern {pattern!r} matches no parameter of the small model.")
    return wanted


def influence_by_layer(influence, pattern):
    """``{layer id: influence}`` from ``{block name: influence}`` of the big model (blocks ``pattern`` does not
    match are left out).

    Raises:
        ValueError: ``pattern`` matches none of the block names.
    """
    regex = re.compile(pattern)
    by_layer = {}
    for name, value in influence.items():
        layer = layer_id(regex, name)
        if layer is not None:
            by_layer[layer] = value
    if not by_layer:
        names = ", ".join(list(influence)[:3]) or "none found"
        raise ValueError(f"layer_id_map='auto': pattern {pattern!r} matches none of the big model's blocks "
                         f"({names}).")
    return by_layer


def choose_layer_map(wanted, influence, pattern):
    """``{small layer id: checkpoint layer id}``: the ``len(wanted)`` checkpoint layers of highest ``influence``
    (``{layer id: value}``; ties keep the earlier entry), in their original order.

    Raises:
        ValueError: the small model has more layers than the big model.
    """
    if len(wanted) > len(influence):
        raise ValueError(f"layer_id_map='auto': the small model has {len(wanted)} layers matching {pattern!r}, "
                         f"the big model only {len(influence)}.")
    kept = sorted(sorted(influence, key=influence.get, reverse=True)[: len(wanted)])
    logger.info("Block influence per checkpoint layer: %s",
                ", ".join(f"{layer}: {value:.3f}" for layer, value in sorted(influence.items())))
    logger.info("layer_id_map='auto' keeps checkpoint layers %s", kept)
    return dict(zip(wanted, kept))
