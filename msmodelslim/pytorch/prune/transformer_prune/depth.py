"""``layer_id_map="auto"``: choose the checkpoint layers a shallower model keeps, by block influence.

A block's influence is the mean, over calibration tokens, of 1 - cos(block input, block output) in the big model
(ShortGPT's Block Influence): a block that barely turns the residual stream can go with the least harm. The
blocks run one after another on the calibration batches, so memory holds one block's activations.
"""
import re

import torch

from msmodelslim.common.prune.transformer_prune import layer_choice
from msmodelslim.pytorch.prune.transformer_prune.activation import check_samples
from msmodelslim.pytorch.utils.sequential import block_hidden, find_blocks, iterate_blocks


def _layer_id(pattern, name):
    match = pattern.match(name + ".") or pattern.match(name)
    return int(match.group(1)) if match else None


def block_influence(model, dataset, pattern):
    """``{layer id: influence}`` for each repeated block of ``model`` whose name ``pattern`` matches.

    Raises:
        ValueError: ``model`` has no repeated blocks, ``pattern`` matches none of their names, a block's
            output is not hidden states shaped like its input, or the batches hold no token.
    """
    check_samples(dataset, "layer_id_map='auto'")
    regex = re.compile(pattern)
    blocks = find_blocks(model)
    ids = {name: _layer_id(regex, name) for name, _ in blocks}
    if not blocks or all(layer is None for layer in ids.values()):
        names = ", ".join(name for name, _ in blocks[:3]) or "none found"
        raise ValueError(f"layer_id_map='auto': pattern {pattern!r} matches none of the big model's blocks "
                         f"({names}).")
    influence = {}
    was_training = model.training
    model.eval()
    try:
        for step in iterate_blocks(model, blocks, dataset, progress="block influence"):
            outputs = step.run()
            layer = ids[step.name]
            if layer is None:
                continue
            total, count = 0.0, 0
            for (args, kwargs), output in zip(step.inputs, outputs):
                hidden = block_hidden(args, kwargs)
                if not isinstance(hidden, torch.Tensor) or hidden.shape != output.shape:
                    raise ValueError(f"layer_id_map='auto': block '{step.name}' does not map hidden states to hidden "
                                     "states of the same shape; give layer_id_map explicitly.")
                width = hidden.shape[-1]
                cosine = torch.nn.functional.cosine_similarity(hidden.reshape(-1, width).float(),
                                                               output.reshape(-1, width).float(), dim=-1)
                total += (1 - cosine).sum().item()
                count += cosine.numel()
            if count == 0:
                raise ValueError("layer_id_map='auto' needs at least one sample: the calibration batches hold no "
                                 "token.")
            influence[layer] = total / count
    finally:
        model.train(was_training)
    return influence


def small_layer_ids(model, pattern):
    """The layer ids ``pattern`` finds in the keys of ``model``'s state dict, sorted."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for m in map(regex.match, model.state_dict()) if m})


def choose_layer_map(small_model, measure_influence, pattern):
    """``{small layer id: checkpoint layer id}`` keeping the checkpoint layers of highest block influence
    (``measure_influence()``, e.g. :func:`block_influence` on the big model), in their original order.

    Raises:
        ValueError: ``pattern`` finds no layer in the small model, or more layers than the big model has.
    """
    wanted = small_layer_ids(small_model, pattern)
    if not wanted:
        raise ValueError(f"layer_id_map='auto': pattern {pattern!r} matches no parameter of the small model.")
    return layer_choice.choose_layer_map(wanted, measure_influence(), pattern)
