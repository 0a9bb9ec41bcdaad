"""Sample inputs that run a vision- or audio-language model's other tower, for the Hugging Face sweep.

A text-only sample leaves a VLM's vision tower and projector unrun, and PruneTorch then (rightly) keeps the
language model's hidden size, which the projector writes. A user pruning such a model gives it images or audio;
so does the sweep, where it can find them generically: the model names a placeholder token (``image_token_id``,
``audio_token_id``, or ``*_token_index``) and has ``get_image_features``/``get_audio_features``, whose output tells
how many placeholders one sample needs. The tensors' shapes are tried in a few usual layouts.
"""
import inspect
import sys

import torch

KINDS = ("image", "audio")


def with_other_modality(model, text_inputs, generator, mel_bins):
    """``text_inputs`` plus image or audio tensors (``mel_bins`` features per audio frame) and their placeholder
    tokens, or None if none runs the model."""
    for kind in KINDS:
        token = _placeholder(model.config, kind)
        features = _features_function(model, kind)
        if token is None or features is None:
            continue
        batch = text_inputs["input_ids"].shape[0]
        options = (_pixels(model, batch, generator) if kind == "image"
                   else _audio(model, batch, generator, mel_bins))
        for tensors in options:
            inputs = _run_with(model, text_inputs, tensors, features, token, kind)
            if inputs is not None:
                return inputs
    return None


def _placeholder(config, kind):
    for name in (f"{kind}_token_id", f"{kind}_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _features_function(model, kind):
    for owner in (model, getattr(model, "model", None)):
        function = getattr(owner, f"get_{kind}_features", None) if owner is not None else None
        if callable(function):
            return function
    return None


def _forward_parameters(model):
    return inspect.signature(model.forward).parameters


def _side(size):
    return size if isinstance(size, int) else size[0]


def _pixels(model, batch, generator):
    """Pixel tensors as (batch, C, H, W), (batch, 1, C, H, W) and LLaVA-Next's (batch, patches, C, H, W)."""
    config = model.config
    vision = getattr(config, "vision_config", None)
    if vision is None or not isinstance(getattr(vision, "image_size", None), (int, list, tuple)):
        return
    side = _side(vision.image_size)
    extra = {"image_sizes": torch.tensor([[side, side]] * batch)} if "image_sizes" in _forward_parameters(model) else {}

    def pixels(*lead):
        return {"pixel_values": torch.randn(*lead, getattr(vision, "num_channels", 3), side, side,
                                            generator=generator), **extra}

    yield pixels(batch)
    yield pixels(batch, 1)
    patches = getattr(sys.modules[type(model).__module__], "image_size_to_num_patches", None)
    if patches is not None and getattr(config, "image_grid_pinpoints", None):
        yield pixels(batch, patches((side, side), config.image_grid_pinpoints, side))


def _audio(model, batch, generator, mel):
    """Audio tensors as features (batch, mel, T) or (batch, T, mel), or waveforms, with a mask where asked."""
    parameters = _forward_parameters(model)
    name = "input_features" if "input_features" in parameters else "input_values"
    if name not in parameters:
        return
    # (shape, length of its time axis)
    for shape, time in (((batch, mel, 64), 64), ((batch, 64, mel), 64), ((batch, 4000), 4000),
                        ((batch, 16000), 16000)):
        tensors = {name: torch.randn(*shape, generator=generator)}
        if f"{name}_mask" in parameters:
            tensors[f"{name}_mask"] = torch.ones(batch, time, dtype=torch.long)
        yield tensors


def _run_with(model, text_inputs, tensors, features, token, kind):
    """The inputs with as many placeholders as the features need, if the whole model runs on them."""
    try:
        with torch.no_grad():
            out = features(**{k: v for k, v in tensors.items() if k != "image_sizes" or _takes(features, k)})
        per_sample, rest = divmod(_feature_tokens(out), text_inputs["input_ids"].shape[0])
        if rest or not per_sample:
            return None
        ids = text_inputs["input_ids"]
        ids = torch.cat([torch.full((ids.shape[0], per_sample), token, dtype=ids.dtype), ids], dim=1)
        inputs = {**text_inputs, "input_ids": ids, **tensors}
        if "attention_mask" in inputs:
            inputs["attention_mask"] = torch.ones_like(ids)
        with torch.no_grad():
            model(**inputs)
        return inputs
    except Exception:  # a layout this model does not take: the caller tries the next one
        return None


def _takes(function, name):
    parameters = inspect.signature(function).parameters
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _feature_tokens(out):
    """How many placeholder tokens ``get_*_features`` output fills (pooled output first, as the models use it)."""
    if getattr(out, "pooler_output", None) is not None:
        out = out.pooler_output
    elif getattr(out, "last_hidden_state", None) is not None:
        out = out.last_hidden_state
    if isinstance(out, torch.Tensor):
        return out.shape[:-1].numel()
    if isinstance(out, (list, tuple)):
        return sum(_feature_tokens(o) for o in out)
    return 0
