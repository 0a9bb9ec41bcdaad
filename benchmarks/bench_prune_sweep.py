"""PruneTorch over every model type transformers can build, next to torch-pruning configured as its own examples.

Every ``model_type`` of the ``transformers.models.auto.modeling_auto`` ``MODEL_*_MAPPING_NAMES`` mappings gets one
class (a head with a fixed-width output where there is one - causal/seq2seq LM, sequence/image/audio
classification, CTC, masked LM - else the base model), a config shrunk generically (hidden 64, FFN 128, 2 layers,
4 heads, vocab <= 1000, images <= 64 px, stage widths <= 256, recursively through sub-configs), counted on the
meta device before anything is allocated, and generic inputs from its ``main_input_name`` and ``forward``
signature (the first candidate the model runs on - for a vision/audio-language model, with images or audio and
their placeholder tokens where ``_multimodal_inputs`` finds a layout that runs; none: "unbuildable", like a model
above 30M parameters, or one whose class or config cannot be built). Each tool then
prunes it to 60 % of the parameters in a child process (and its process group) under a time limit - PruneTorch
with ``trace_timeout`` at 40 % of it, so that its own documented time-budget error can show - and the result is
classified:

* **pruned**: within 2 points of the budget, the main output (``logits``, else the first output tensor) keeps its
  shape (only its last dimension where the unpruned model with perturbed weights changes it too: a predicted
  length), and the plan replayed on a fresh copy (``prune_by_desc`` / ``load_pruning_history``) gives the same
  parameter shapes;
* **short**: it ran and removed fewer parameters than asked (the logged reason is kept);
* **refused**: a documented error (``msmodelslim.errors`` types, or the ``ValueError``/``TypeError`` msmodelslim
  raises on purpose) with the model unchanged (state dict and config compared with a snapshot);
* **crashed**: anything else - another exception type or one from outside msmodelslim, a hang, a dead process,
  a model that no longer runs, an output of another shape, a replay that differs, a budget overshot by more than
  2 points, or a model changed by a failed call.

torch-pruning documents no refusals: each of its exceptions counts as a crash.

Writes benchmarks/results/prune_sweep.md. Run:
    python benchmarks/bench_prune_sweep.py [--quick | --types a,b,c] [--limit N] [--jobs N] [--results DIR]
"""
import argparse
import contextlib
import copy
import datetime
import functools
import importlib.metadata
import inspect
import io
import json
import logging
import multiprocessing
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import traceback
import warnings

import common
from common import ROOT, write_result

TITLE = "PruneTorch over every Hugging Face model type"
TARGET = 0.6
TOLERANCE = 0.02
MAX_PARAMS = 30_000_000
TIMEOUT_S = 120
# PruneTorch's own budget for its dependency-graph trace (a documented argument, default 120 s): below the child's
# limit, so that its GraphTraceError - the documented answer to a model it cannot trace - is seen, not a hang
TRACE_SHARE = 0.4
WIDTH, FFN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB, IMAGE = 64, 128, 2, 4, 2, 16, 1000, 64
STAGE_WIDTH = 256  # the widest stage of a list of widths (CNN stages): room for 16-channel alignment
BATCH, SEQ = 2, 16
MEL_FIELDS = ("num_mel_bins", "feature_size", "input_feat_per_channel", "n_mels")
TOOLS = ("msmodelslim", "torch-pruning")
CATEGORIES = ("pruned", "short", "refused", "crashed", "unbuildable")
# one model type per structural kind: encoder, decoder with grouped-query attention, encoder-decoder with relative
# position bias (t5), windowed vision attention, disentangled relative positions, convolutional, audio
QUICK = ("bert", "gpt2", "resnet")

# mappings tried first, in order: heads whose output width does not depend on the hidden size, so "the output keeps
# its shape" is meaningful and the hidden size itself may be pruned; the base model (MODEL_MAPPING_NAMES) after
PREFERRED = ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
             "decoder:MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
             "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
             "MODEL_FOR_CTC_MAPPING_NAMES", "MODEL_FOR_MASKED_LM_MAPPING_NAMES", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
             "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES",
             "MODEL_FOR_TIME_SERIES_PREDICTION_MAPPING_NAMES", "MODEL_MAPPING_NAMES")


class Unbuildable(Exception):
    """The model type cannot be built small, or no generic input runs it."""


# ---------------------------------------------------------------------------------------------- enumeration
def model_types():
    """``{model_type: (class name, mapping name)}``: one class per type of every ``MODEL_*_MAPPING_NAMES``."""
    from transformers.models.auto import modeling_auto

    mappings = {name: getattr(modeling_auto, name) for name in sorted(dir(modeling_auto))
                if name.startswith("MODEL_") and name.endswith("_MAPPING_NAMES")
                and isinstance(getattr(modeling_auto, name), dict)}
    masked = mappings.get("MODEL_FOR_MASKED_LM_MAPPING_NAMES", {})
    order = [p for p in PREFERRED if p.split(":")[-1] in mappings]
    order += [name for name in mappings if name not in [p.split(":")[-1] for p in order]]
    chosen = {}
    for entry in order:
        kind, _, name = entry.rpartition(":")
        for model_type, cls in mappings[name].items():
            if isinstance(cls, (tuple, list)):
                cls = cls[0]
            if model_type in chosen or not isinstance(cls, str):
                continue
            if kind == "decoder" and model_type in masked:
                continue  # an encoder with an LM head: its sequence classifier is the simpler head
            chosen[model_type] = (cls, name)
    return dict(sorted(chosen.items()))


def select(types, names=None, quick=False, limit=None):
    """The model types to run: ``--types`` names, the quick slice, or all; ``limit`` keeps an evenly spaced
    deterministic sample of that many."""
    if quick:
        names = list(QUICK)
    if names:
        unknown = [n for n in names if n not in types]
        if unknown:
            raise SystemExit(f"unknown model type(s): {', '.join(unknown)}")
        chosen = list(names)
    else:
        chosen = list(types)
    if limit and limit < len(chosen):
        step = len(chosen) / limit
        chosen = [chosen[int(i * step)] for i in range(limit)]
    return chosen


# ---------------------------------------------------------------------------------------------- configs
def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _pow2_at_most(value, cap):
    out = 1
    while out * 2 <= min(value, cap):
        out *= 2
    return out


LAYER_KEYS = re.compile(r"^(num_hidden_layers|num_layers|n_layers?|encoder_layers|decoder_layers|"
                        r"num_(encoder|decoder)_layers|.*_num_layers|num_.*_layers|.*_layers|depth)$")
WIDTH_KEYS = re.compile(r"^(hidden_size|d_model|n_embd|n_embed|embed_dim|model_dim|dim|d_embed|embedding_size|"
                        r"embedding_dim|word_embed_proj_dim|text_embed_dim|vision_embed_dim|.*_hidden_size|"
                        r"projection_dim|proj_dim|hidden_dim|emb_dim|.*_embed_dim|.*_d_model|d_latents)$")
FFN_KEYS = re.compile(r"^(intermediate_size|ffn_dim|d_ff|n_inner|ffn_hidden_size|mlp_dim|.*_intermediate_size|"
                      r".*_ffn_dim|encoder_ffn_dim|decoder_ffn_dim|.*_mlp_dim|dim_feedforward|.*_d_ff)$")
HEAD_KEYS = re.compile(r"^(num_attention_heads|n_heads?|num_heads|.*_attention_heads|.*_num_heads|"
                       r"num_.*_heads)$")
KV_KEYS = re.compile(r"^(num_key_value_heads|num_kv_heads|n_kv_heads|multi_query_group_num|.*_key_value_heads)$")
HEAD_DIM_KEYS = re.compile(r"^(head_dim|d_kv|attention_head_dim|kv_channels|.*_head_dim|head_size|rotary_dim)$")
LORA_KEYS = re.compile(r"^(q_lora_rank|kv_lora_rank)$")
EXPERT_KEYS = re.compile(r"^(num_experts|num_local_experts|n_routed_experts|moe_num_experts|num_routed_experts)$")
TOPK_KEYS = re.compile(r"^(num_experts_per_tok|moe_topk|top_k|num_selected_experts|moe_k)$")
VOCAB_KEYS = re.compile(r"^(.*vocab_size.*)$")
TOKEN_KEYS = re.compile(r"^(.*_token_id|.*_token_index|.*_token_ids|.*_start_token_id|.*_id)$")
WIDTH_LIST_KEYS = re.compile(r"(hidden|dim|channels|width|embed)")
NOT_WIDTH_LIST = re.compile(r"(kernel|stride|patch|window|pool|dilation|ratio|scale|stage|layer|depth|head|"
                            r"size_per|grid|position|mel|channel_multiplier|index|indices)")


def reduce_config(config, seen=None):
    """Shrink ``config`` in place (and its sub-configs): widths to 64, FFN to 128, 2 layers, 4 heads (2 key/value
    heads where the config has the field: grouped-query attention), vocab 1000, images to at most 64 px, stage
    widths to at most 256. Returns ``config``."""
    from transformers import PretrainedConfig

    seen = set() if seen is None else seen
    if id(config) in seen:
        return config
    seen.add(id(config))
    fields = dict(vars(config))
    layers_before = {}
    stage_counts = {len(v) for k, v in fields.items() if "depth" in k and isinstance(v, (list, tuple))}
    for key, value in fields.items():
        if key.startswith("_") or (LAYER_KEYS.match(key) and _is_int(value) and value in stage_counts):
            continue  # the number of stages of a hierarchical model (len(depths)) stays
        if isinstance(value, PretrainedConfig):
            reduce_config(value, seen)
        elif isinstance(value, dict) and value.get("model_type") and key.endswith("config"):
            continue  # a dict sub-config: the class builds it; left as is
        elif key in ("use_timm_backbone", "use_pretrained_backbone") and value is True:
            setattr(config, key, False)  # a timm backbone needs timm; pretrained weights need a download
        elif _is_int(value):
            new = _reduced_int(key, value)
            if new != value:
                if LAYER_KEYS.match(key):
                    layers_before[value] = new
                setattr(config, key, new)
        elif isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
            new = _reduced_list(key, list(value))
            if new != list(value):
                setattr(config, key, type(value)(new))
    # per-layer lists (layer_types, ...) follow the new layer count
    for key, value in dict(vars(config)).items():
        if isinstance(value, list) and len(value) in layers_before and not key.startswith("_"):
            setattr(config, key, value[:layers_before[len(value)]])
    _fit_images(config)
    _fit_rope(config)
    return config


def _reduced_int(key, value):
    if KV_KEYS.match(key):  # a config with this field supports grouped-query attention: exercise it
        return value if value <= 1 else min(value, KV_HEADS)
    if HEAD_KEYS.match(key):
        return value if value <= HEADS else HEADS
    if HEAD_DIM_KEYS.match(key):
        return min(value, HEAD_DIM)
    if LAYER_KEYS.match(key):
        return min(value, LAYERS)
    if FFN_KEYS.match(key):
        return min(value, FFN)
    if WIDTH_KEYS.match(key):
        return min(value, WIDTH)
    if LORA_KEYS.match(key):
        return min(value, 32)
    if EXPERT_KEYS.match(key):
        return min(value, 4)
    if TOPK_KEYS.match(key):
        return min(value, 2)
    if VOCAB_KEYS.match(key):
        return min(value, VOCAB)
    if key in ("max_position_embeddings", "n_positions") and value > 512:
        return 512
    return value


def _reduced_list(key, value):
    low = key.lower()
    if "depth" in low or low.endswith("layers") or low in ("num_layers", "layers"):
        return [min(v, LAYERS) for v in value]
    if "head" in low and "dim" not in low and "size" not in low:
        return [_pow2_at_most(v, HEADS) if v > 0 else v for v in value]
    if WIDTH_LIST_KEYS.search(low) and not NOT_WIDTH_LIST.search(low) and max(value) > STAGE_WIDTH:
        scale = STAGE_WIDTH / max(value)
        return [max(8, int(round(v * scale / 8)) * 8) if v > 0 else v for v in value]
    return value


def _fit_images(config):
    """Images of at most 64 px, a whole number of patches; attention windows no larger than the last stage."""
    patch = getattr(config, "patch_size", None)
    patch = patch[0] if isinstance(patch, (list, tuple)) and patch and _is_int(patch[0]) else patch
    size = getattr(config, "image_size", None)
    if _is_int(size) or (isinstance(size, (list, tuple)) and size and _is_int(size[0])):
        first = size if _is_int(size) else size[0]
        new = patch * max(2, IMAGE // patch) if _is_int(patch) and patch > 0 else IMAGE
        if first > new:
            config.image_size = new if _is_int(size) else type(size)([new] * len(size))
            first = new
        depths, window = getattr(config, "depths", None), getattr(config, "window_size", None)
        if _is_int(window) and _is_int(patch) and patch > 0 and isinstance(depths, (list, tuple)) and depths:
            last = first // patch // 2 ** (len(depths) - 1)
            if 1 <= last < window:
                config.window_size = last


def _fit_rope(config):
    """Multimodal rotary sections that must sum to half the (new) head size."""
    for key in ("rope_parameters", "rope_scaling"):
        rope = getattr(config, key, None)
        if not isinstance(rope, dict) or not isinstance(rope.get("mrope_section"), list):
            continue
        head_dim = getattr(config, "head_dim", None) or (
            getattr(config, "hidden_size", WIDTH) // max(getattr(config, "num_attention_heads", HEADS), 1))
        sections, half = rope["mrope_section"], head_dim // 2
        total = sum(sections)
        if total != half and total > 0:
            new = [max(1, s * half // total) for s in sections]
            new[0] += half - sum(new)
            rope["mrope_section"] = new


def _special_tokens(config, seen=None, out=None):
    """Every token id a config names (recursively)."""
    from transformers import PretrainedConfig

    seen, out = (set() if seen is None else seen), (set() if out is None else out)
    if id(config) in seen:
        return out
    seen.add(id(config))
    for key, value in vars(config).items():
        if isinstance(value, PretrainedConfig):
            _special_tokens(value, seen, out)
        elif TOKEN_KEYS.match(key) and _is_int(value):
            out.add(value)
        elif TOKEN_KEYS.match(key) and isinstance(value, (list, tuple)):
            out.update(v for v in value if _is_int(v))
    return out


def _remap_tokens(config, mapping, seen=None):
    """Token ids beyond the shrunk vocabulary move to free ids at its top end."""
    from transformers import PretrainedConfig

    seen = set() if seen is None else seen
    if id(config) in seen:
        return
    seen.add(id(config))
    for key, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            _remap_tokens(value, mapping, seen)
        elif TOKEN_KEYS.match(key) and _is_int(value) and value in mapping:
            setattr(config, key, mapping[value])
        elif TOKEN_KEYS.match(key) and isinstance(value, (list, tuple)) and any(v in mapping for v in value):
            setattr(config, key, type(value)(mapping.get(v, v) for v in value))


def _vocab_sizes(config, seen=None, out=None):
    from transformers import PretrainedConfig

    seen, out = (set() if seen is None else seen), ([] if out is None else out)
    if id(config) in seen:
        return out
    seen.add(id(config))
    for key, value in vars(config).items():
        if isinstance(value, PretrainedConfig):
            _vocab_sizes(value, seen, out)
        elif VOCAB_KEYS.match(key) and _is_int(value) and value > 0:
            out.append(value)
    return out


def small_config(model_type):
    """The default config of ``model_type``, shrunk, with its special token ids inside the vocabulary."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.for_model(model_type)
    except Exception as exc:
        raise Unbuildable(f"default config: {_short(exc)}") from exc
    reduce_config(config)
    vocab = min(_vocab_sizes(config) or [VOCAB])
    tokens = sorted(t for t in _special_tokens(config) if t >= vocab - 8)
    mapping, free = {}, vocab - 1
    for token in reversed(tokens):
        if token >= vocab:
            while free in tokens or free in mapping.values():
                free -= 1
            mapping[token] = free
    _remap_tokens(config, mapping)
    return config


# ---------------------------------------------------------------------------------------------- building
def model_class(name):
    import transformers

    try:
        return getattr(transformers, name)
    except Exception as exc:  # a missing optional dependency raises on first access
        raise Unbuildable(f"class {name}: {_short(exc)}") from exc


def meta_params(cls, config):
    """Parameter count of ``cls(config)`` built on the meta device (nothing allocated)."""
    import torch

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls(copy.deepcopy(config))
    except Exception as exc:
        raise Unbuildable(f"meta build: {_short(exc)}") from exc
    return sum(p.numel() for p in model.parameters())


def build(model_type, cls_name, other_modality=True):
    """``(model in eval mode, inputs dict, parameter count)`` of a small ``model_type``, or :class:`Unbuildable`.
    ``other_modality=False``: a vision/audio-language model gets text only."""
    import torch

    try:
        config = small_config(model_type)
    except Unbuildable:
        raise
    except Exception as exc:
        raise Unbuildable(f"shrinking the config: {_short(exc)}") from exc
    cls = model_class(cls_name)
    params = meta_params(cls, config)
    if params > MAX_PARAMS:
        raise Unbuildable(f"{params / 1e6:.0f}M parameters after shrinking (limit {MAX_PARAMS / 1e6:.0f}M)")
    torch.manual_seed(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls(config).eval()
    except Exception as exc:
        raise Unbuildable(f"build: {_short(exc)}") from exc
    inputs = find_inputs(model, other_modality)
    return model, inputs, params


def _find(config, names, default=None):
    """The first int value of one of ``names`` in ``config`` or its sub-configs (breadth first)."""
    from transformers import PretrainedConfig

    queue, seen = [config], set()
    while queue:
        cfg = queue.pop(0)
        if id(cfg) in seen:
            continue
        seen.add(id(cfg))
        for name in names:
            value = getattr(cfg, name, None)
            if _is_int(value):
                return value
            if isinstance(value, (list, tuple)) and value and _is_int(value[0]):
                return value[0]
        queue += [v for v in vars(cfg).values() if isinstance(v, PretrainedConfig)]
    return default


def _ids(config, shape, generator):
    import torch

    vocab = min(_vocab_sizes(config) or [VOCAB])
    special = _special_tokens(config)
    allowed = torch.tensor([i for i in range(min(vocab, 4096)) if i not in special and i >= 2] or [0])
    return allowed[torch.randint(0, len(allowed), shape, generator=generator)]


def input_candidates(model):
    """Input dicts to try, most specific first, from ``main_input_name`` and the ``forward`` signature."""
    import torch

    config = model.config
    params = inspect.signature(model.forward).parameters
    main = getattr(model, "main_input_name", "input_ids")
    g = torch.Generator().manual_seed(0)
    extra = {}
    if "use_cache" in params:
        extra["use_cache"] = False
    if "return_dict" in params:
        extra["return_dict"] = True
    channels = _find(config, ("num_channels", "in_channels", "num_input_channels", "in_chans"), 3)
    image = _find(config, ("image_size", "img_size", "input_size"), IMAGE)
    image = min(image, 256)
    mel = _find(config, MEL_FIELDS, 80)
    source = _find(config, ("max_source_positions",), None)

    def text(length=SEQ):
        out = {"input_ids": _ids(config, (BATCH, length), g)}
        if "attention_mask" in params:
            out["attention_mask"] = torch.ones(BATCH, length, dtype=torch.long)
        return out

    def decoder(out, length=SEQ):
        if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
            out["decoder_input_ids"] = _ids(config, (BATCH, length), g)
        return out

    candidates = []
    if main == "input_ids" or (main not in params and "input_ids" in params):
        for length in (SEQ, 64):
            candidates.append(decoder(text(length), length))
    if main == "pixel_values" or "pixel_values" in params:
        for size in dict.fromkeys((image, IMAGE, 32, 224)):
            px = {"pixel_values": torch.randn(BATCH, channels, size, size, generator=g)}
            candidates.append(decoder(px) if main == "pixel_values" else decoder({**text(), **px}))
        if main == "pixel_values" and "input_ids" in params:  # image-to-text: the text side as well
            candidates.append(decoder({**text(), "pixel_values": torch.randn(BATCH, channels, image, image,
                                                                              generator=g)}))
    if main == "input_features":
        shapes = [(BATCH, mel, 2 * source)] if source else []
        shapes += [(BATCH, 64, mel), (BATCH, mel, 64), (BATCH, 3000, mel)]
        for shape in shapes:
            candidates.append(decoder({"input_features": torch.randn(*shape, generator=g)}))
    if main == "input_values":
        for shape in ((BATCH, 4000), (BATCH, 16000), (BATCH, 64, mel), (BATCH, 1024, mel)):
            candidates.append(decoder({"input_values": torch.randn(*shape, generator=g)}))
    if main == "past_values":
        context = _find(config, ("context_length",), 32)
        lags = getattr(config, "lags_sequence", None) or [0]
        length = context + max(lags)
        width = _find(config, ("num_input_channels", "input_size"), 1)
        for shape in ((BATCH, length, width), (BATCH, length)):
            candidates.append({"past_values": torch.randn(*shape, generator=g)})
    if main == "inputs_embeds" or (main not in ("input_ids", "pixel_values", "input_features", "input_values",
                                                 "past_values") and "inputs_embeds" in params):
        hidden = _find(config, ("hidden_size", "d_model"), WIDTH)
        candidates.append(decoder({"inputs_embeds": torch.randn(BATCH, SEQ, hidden, generator=g)}))
    return [{**c, **{k: v for k, v in extra.items() if k not in c}} for c in candidates]


def find_inputs(model, other_modality=True):
    """The first candidate input the model runs on (with images or audio where they run it, unless
    ``other_modality`` is False), or :class:`Unbuildable` with the last error."""
    import torch

    first = None
    for candidate in input_candidates(model):
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = model(**candidate)
            if main_output(out) is not None:
                return _multimodal(model, candidate) if other_modality else candidate
            first = first or f"no tensor in the output of {type(out).__name__}"
        except Exception as exc:  # the first (most specific) candidate's error is reported
            first = first or f"{_short(exc)} (inputs: {', '.join(candidate)})"
    raise Unbuildable(first or f"no generic input for main_input_name="
                              f"{getattr(model, 'main_input_name', None)!r}")


def _multimodal(model, inputs):
    """A text sample of a vision/audio-language model, given images or audio where they run it (else as it is)."""
    import torch

    from _multimodal_inputs import with_other_modality

    if "input_ids" not in inputs:
        return inputs
    mel = _find(model.config, MEL_FIELDS + ("input_dim",), 80)
    return with_other_modality(model, inputs, torch.Generator().manual_seed(1), mel) or inputs


def main_output(out):
    from _torch_pruning_baseline import main_output as first_tensor

    return first_tensor(out)


def run_model(model, inputs):
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(**inputs)


def count(model):
    return sum(p.numel() for p in model.parameters())


def shapes(model):
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def snapshot(model):
    """What "unchanged" means: every state-dict tensor (NaN-aware) and the config."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = model.config.to_json_string() if hasattr(model, "config") else None
    return state, config


def unchanged(model, snap):
    import torch

    state, config = snap
    now = model.state_dict()
    if set(now) != set(state):
        return False
    for key, value in state.items():
        if now[key].shape != value.shape or not torch.equal(torch.nan_to_num(now[key]), torch.nan_to_num(value)):
            return False
    return config is None or model.config.to_json_string() == config


# ---------------------------------------------------------------------------------------------- the two tools
class _Capture(logging.Handler):
    """Keeps the msmodelslim log records that explain a short result."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.stopped, self.protected, self.breaks = [], [], []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Pruning stopped early"):
            self.stopped.append(message[len("Pruning stopped early: "):])
        elif message.startswith("Protected from pruning"):
            self.protected.append(message[len("Protected from pruning: "):])
        elif "breaks the model" in message:
            self.breaks.append(message)

    def reason(self):
        parts = []
        if self.breaks:
            parts.append(f"{len(self.breaks)} group(s) protected after breaking the model, e.g. {self.breaks[0]}")
        if self.protected:
            parts.append(f"{len(self.protected)} group(s) protected, e.g. {self.protected[0]}")
        parts += [m.split(":")[0] for m in self.stopped[-1:]]  # the plan may be made again: its last word counts
        return "; ".join(parts) or "no reason logged"


def _msmodelslim(model, inputs, before_out, trace_timeout):
    from msmodelslim.pytorch.prune.prune_torch import CallParams, PruneTorch
    from msmodelslim.utils.logging import logger

    capture = _Capture()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    fresh = copy.deepcopy(model)
    snap = snapshot(model)
    total = count(model)
    start = time.perf_counter()
    try:
        desc = PruneTorch(model, CallParams(**inputs), trace_timeout=trace_timeout).prune(TARGET)
    except Exception as exc:
        result, same = _error(exc, "msmodelslim"), unchanged(model, snap)
        if _documented(exc) and same:
            return {**result, "outcome": "refused"}
        if not same:
            result["message"] = "model changed after the error; " + result["message"]
        return {**result, "outcome": "crashed"}
    seconds = time.perf_counter() - start

    def replay():
        PruneTorch(fresh, CallParams(**inputs), trace_timeout=trace_timeout).prune_by_desc(
            json.loads(json.dumps(desc)))
        return fresh

    return _judge(model, inputs, before_out, total, seconds, replay, capture.reason, "msmodelslim", fresh)


def _torch_pruning(model, inputs, before_out, trace_timeout=None):
    import _torch_pruning_baseline as baseline

    fresh = copy.deepcopy(model)
    total = count(model)
    start = time.perf_counter()
    try:
        pruned, pruner, _ = baseline.prune_to_budget(model, inputs, TARGET)
    except Exception as exc:
        return {**_error(exc, "torch_pruning"), "outcome": "crashed"}
    seconds = time.perf_counter() - start
    heads = len(baseline.find_attention(fresh))
    reason = (f"uniform channel/head ratio; {heads} attention module(s) configured with num_heads"
              if heads else "uniform channel ratio; no attention module configured")
    return _judge(pruned, inputs, before_out, total, seconds, lambda: baseline.replay(fresh, inputs, pruner),
                  lambda: reason, "torch_pruning", fresh)


def _judge(model, inputs, before_out, total, seconds, replay, reason, package, original):
    """Classify a pruning that returned; ``original`` is an unpruned copy (until ``replay()`` prunes it)."""
    kept = count(model) / total
    result = {"kept": kept, "seconds": round(seconds, 2)}
    try:
        out = main_output(run_model(model, inputs))
    except Exception as exc:
        error = _error(exc, package)
        return {**result, **error, "outcome": "crashed", "error": f"model no longer runs: {error['error']}"}
    if out is None or (tuple(out.shape) != tuple(before_out) and not _same_up_to_data(out, before_out, original,
                                                                                       inputs)):
        return {**result, "outcome": "crashed", "error": "OutputShapeChanged", "frame": "",
                "message": f"{tuple(before_out)} -> {None if out is None else tuple(out.shape)}"}
    try:
        fresh = replay()
    except Exception as exc:
        error = _error(exc, package)
        return {**result, **error, "outcome": "crashed", "error": f"replay: {error['error']}"}
    if shapes(fresh) != shapes(model):
        diff = next(k for k in shapes(model) if shapes(fresh).get(k) != shapes(model)[k]) \
            if set(shapes(fresh)) == set(shapes(model)) else "parameter names"
        return {**result, "outcome": "crashed", "error": "ReplayMismatch", "frame": "",
                "message": f"replayed shapes differ at {diff}"}
    if kept < TARGET - TOLERANCE:
        return {**result, "outcome": "crashed", "error": "OverPruned", "frame": "",
                "message": f"kept {kept:.1%} of the parameters for a budget of {TARGET:.0%}"}
    if kept > TARGET + TOLERANCE:
        return {**result, "outcome": "short", "message": reason()}
    return {**result, "outcome": "pruned"}


def _same_up_to_data(out, before_out, original, inputs):
    """Whether a changed output shape is one the weights decide (a predicted length, e.g. FastSpeech2 durations):
    the unpruned model with perturbed weights changes it too, and the last dimension stays."""
    import torch

    if out.dim() != len(before_out) or out.shape[-1] != before_out[-1]:
        return False
    perturbed = copy.deepcopy(original)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in perturbed.parameters():
            if p.is_floating_point():
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=generator))
    try:
        other = main_output(run_model(perturbed, inputs))
    except Exception:  # noqa: BLE001 - then the shape is not shown to depend on the data
        return False
    return other is not None and tuple(other.shape) != tuple(before_out)


def _documented(exc):
    """An error msmodelslim raises on purpose: its own types, or a ValueError/TypeError raised in its code."""
    from msmodelslim.errors import ModelslimError

    if isinstance(exc, ModelslimError):
        return True
    if isinstance(exc, (ValueError, TypeError)):  # by a ``raise`` statement of msmodelslim, not by an operator
        frames = traceback.extract_tb(exc.__traceback__)
        return bool(frames) and _in_package(frames[-1].filename, "msmodelslim") and \
            (frames[-1].line or "").lstrip().startswith("raise")
    return False


def _in_package(filename, package):
    return f"{os.sep}{package}{os.sep}" in filename and "site-packages" not in filename \
        if package == "msmodelslim" else f"{os.sep}{package}{os.sep}" in filename


def _error(exc, package):
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _in_package(f.filename, package)]
    frame = ""
    if frames:
        f = frames[-1]
        path = f.filename.split(f"{os.sep}{package}{os.sep}", 1)[-1]
        frame = f"{package}/{path}:{f.lineno} in {f.name}"
    return {"error": type(exc).__name__, "frame": frame, "message": " ".join(str(exc).split())[:300]}


def _short(exc, limit=160):
    """``"Type: message"`` on one line, cut at ``limit`` characters of message."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"


# ---------------------------------------------------------------------------------------------- child processes
def job(model_type, cls_name, tool, timeout=TIMEOUT_S):
    """Build ``model_type`` and prune it with ``tool``; a JSON-able dict (runs in the child)."""
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    try:
        model, inputs, params = build(model_type, cls_name)
    except Unbuildable as exc:
        return {"outcome": "unbuildable", "message": str(exc)}
    before = main_output(run_model(model, inputs))
    info = {"params": params, "inputs": sorted(k for k in inputs if k not in ("use_cache", "return_dict"))}
    run = _msmodelslim if tool == "msmodelslim" else _torch_pruning
    return {**info, **run(model, inputs, tuple(before.shape), max(5.0, TRACE_SHARE * timeout))}


def _child(conn, model_type, cls_name, tool, quiet, timeout):
    os.setpgrp()  # its own process group: a kill reaches the tracing process PruneTorch forks as well
    if quiet:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    try:
        result = job(model_type, cls_name, tool, timeout)
    except BaseException as exc:  # reported to the parent: a crash outside the tool call
        result = {**_error(exc, "msmodelslim" if tool == "msmodelslim" else "torch_pruning"),
                  "outcome": "crashed"}
        result["message"] = "outside the prune call: " + result["message"]
    conn.send(result)
    conn.close()
    os._exit(0)


class _Running:
    def __init__(self, model_type, cls_name, tool, timeout, quiet):
        ctx = multiprocessing.get_context("fork")
        self.key, self.timeout = (model_type, tool), timeout
        self.conn, child = ctx.Pipe(duplex=False)
        # not a daemon: PruneTorch forks its own tracing child
        self.process = ctx.Process(target=_child, args=(child, model_type, cls_name, tool, quiet, timeout))
        self.start = time.monotonic()
        self.process.start()
        child.close()

    def poll(self):
        """The result when done, else None."""
        if self.conn.poll():
            try:
                result = self.conn.recv()
            except EOFError:
                result = None
            self.process.join(10)
            self._kill()
            return result or self._died()
        if not self.process.is_alive():
            self.process.join()
            self._kill()
            return self._died()
        if time.monotonic() - self.start > self.timeout:
            self._kill()
            return {"outcome": "crashed", "error": "Hang", "frame": "",
                    "message": f"no result within {self.timeout} s"}
        return None

    def _kill(self):
        """End the child and whatever it started (its process group)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.join()
        self.conn.close()

    def _died(self):
        code = self.process.exitcode
        why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return {"outcome": "crashed", "error": "ProcessDied", "frame": "", "message": f"the child died ({why})"}


def _preimport(cls_name):
    """Import the class's module once in the parent, so that both tools' children inherit it."""
    try:
        model_class(cls_name)
    except Exception:  # the child reports it
        pass


def sweep(names, types=None, tools=TOOLS, jobs=1, timeout=TIMEOUT_S, quiet=True, progress=print, partial=None):
    """``{model_type: {"class", "mapping", tool: result}}`` for the model types ``names``; ``partial(done)`` is
    called with the finished types after each one. An interruption ends every child first."""
    types = types or model_types()
    todo = [(n, tool) for n in names for tool in tools]
    results = {n: {"class": types[n][0], "mapping": types[n][1]} for n in names}
    running = []
    try:
        _loop(todo, running, results, types, tools, jobs, timeout, quiet, progress, partial)
    finally:
        for item in running:
            item._kill()
    for name in names:
        for tool in tools:
            results[name].setdefault(tool, results[name][tools[0]])
    return results


def finished(results, tools):
    """The entries of ``results`` every tool has answered."""
    return {n: e for n, e in results.items() if all(t in e for t in tools)}


def _loop(todo, running, results, types, tools, jobs, timeout, quiet, progress, partial):
    done = 0
    while todo or running:
        while todo and len(running) < max(jobs, 1):
            name, tool = todo.pop(0)
            previous = [results[name][t] for t in tools if t in results[name]]
            if previous and previous[0]["outcome"] == "unbuildable":
                results[name][tool] = previous[0]  # one build decides for both tools
                continue
            _preimport(types[name][0])
            running.append(_Running(name, types[name][0], tool, timeout, quiet))
        for item in list(running):
            result = item.poll()
            if result is not None:
                running.remove(item)
                name, tool = item.key
                result["seconds_total"] = round(time.monotonic() - item.start, 1)
                results[name][tool] = result
                done += 1
                if progress:
                    progress(f"[{done}] {name:<28} {tool:<14} {_cell(result)}", flush=True)
                first = results[name].get(tools[0], {}).get("outcome")
                if partial and all(t in results[name] or first == "unbuildable" for t in tools):
                    for t in tools:
                        results[name].setdefault(t, results[name][tools[0]])
                    partial(finished(results, tools))
        if running:
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- report
def _cell(result):
    outcome = result["outcome"]
    if "kept" in result and outcome in ("pruned", "short"):
        return f"{outcome} {result['kept']:.1%}"
    if outcome in ("crashed", "refused"):
        return f"{outcome} ({result.get('error', '')})"
    return outcome


def counts(results, tool):
    out = dict.fromkeys(CATEGORIES, 0)
    for entry in results.values():
        out[entry[tool]["outcome"]] += 1
    return out


@functools.lru_cache(maxsize=1)
def git_state():
    """``(commit, uncommitted changes)`` of the code the sweep runs: read once, when the sweep starts."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=30).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", ""
    return commit, bool(dirty)


def provenance(load_before, load_after, started):
    import torch
    import transformers

    def version(dist, module=None):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return getattr(module, "__version__", "?")

    commit, dirty = git_state()
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import torch_pruning

    return (f"Commit `{commit}`{' (with uncommitted changes)' if dirty else ''}, {started:%Y-%m-%d %H:%M} UTC, "
            f"{cpu}, {os.cpu_count()} cores; torch {version('torch', torch)}, transformers "
            f"{version('transformers', transformers)}, torch-pruning {version('torch-pruning', torch_pruning)}, "
            f"msmodelslim {version('msmodelslim')}; load average {load_before[0]:.2f} before, "
            f"{load_after[0]:.2f} after (1 min).")


def report(results, tools, seconds, load_before, load_after, started, note="", timeout=TIMEOUT_S):
    from msmodelslim.utils.report import format_table, human_count

    names = list(results)
    summary_rows = [[tool] + [counts(results, tool)[c] for c in CATEGORIES] + [len(names)] for tool in tools]
    summary = format_table(["tool"] + list(CATEGORIES) + ["types"], summary_rows)
    summary = (f"{provenance(load_before, load_after, started)}\n\n{note}Budget: {TARGET:.0%} of the parameters, "
               f"within {TOLERANCE * 100:.0f} points; {timeout} s per model and tool (PruneTorch trace_timeout "
               f"{max(5.0, TRACE_SHARE * timeout):g} s); {seconds / 60:.1f} min in "
               f"all.\n\n{summary}")
    rows = []
    for name in names:
        entry = results[name]
        params = next((entry[t].get("params") for t in tools if entry[t].get("params")), None)
        rows.append([name, entry["class"], human_count(params) if params else "-"] + [_cell(entry[t]) for t in tools])
    per_type = format_table(["type", "class", "params"] + list(tools), rows)
    sections = [("Summary", summary), ("Per model type", per_type)]
    for tool in tools:
        crashes = [[n, results[n][tool].get("error", ""), results[n][tool].get("frame", "") or "-",
                    results[n][tool].get("message", "").replace("|", "/")[:200]]
                   for n in names if results[n][tool]["outcome"] == "crashed"]
        text = format_table(["type", "exception", f"last {tool.replace('-', '_')} frame", "message"], crashes) \
            if crashes else "None."
        sections.append((f"Crashes: {tool}", text))
    notes = [[n, t, results[n][t]["outcome"], results[n][t].get("message", "").replace("|", "/")[:300]]
             for n in names for t in tools if results[n][t]["outcome"] in ("short", "refused")]
    if notes:
        sections.append(("Short and refused: reasons", format_table(["type", "tool", "outcome", "reason"], notes)))
    unbuildable = [[n, results[n][tools[0]].get("message", "").replace("|", "/")[:200]]
                   for n in names if results[n][tools[0]]["outcome"] == "unbuildable"]
    if unbuildable:
        sections.append(("Unbuildable", format_table(["type", "reason"], unbuildable)))
    return sections


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"a smoke run on {', '.join(QUICK)}")
    parser.add_argument("--types", help="comma-separated model types")
    parser.add_argument("--limit", type=int, help="an evenly spaced deterministic sample of N types")
    parser.add_argument("--results", default=str(common.RESULTS), help="folder of prune_sweep.md")
    parser.add_argument("--jobs", type=int, default=1, help="child processes at a time")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated: msmodelslim,torch-pruning")
    parser.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds per model type and tool")
    parser.add_argument("--verbose", action="store_true", help="keep the children's stdout/stderr")
    args = parser.parse_args(argv)
    tools = tuple(t for t in args.tools.split(",") if t)
    if not tools or any(t not in TOOLS for t in tools):
        parser.error(f"--tools: choose from {', '.join(TOOLS)}")
    import torch  # noqa: F401  (imported once, before the children fork)
    import torch_pruning  # noqa: F401
    import transformers  # noqa: F401

    import msmodelslim.pytorch.prune.prune_torch  # noqa: F401

    started = datetime.datetime.now(datetime.timezone.utc)
    git_state()  # the commit that runs, before anything can change it
    load_before = os.getloadavg()
    types = model_types()
    names = select(types, args.types.split(",") if args.types else None, args.quick, args.limit)
    print(f"{len(types)} model types; running {len(names)} with {', '.join(tools)}", flush=True)
    start = time.perf_counter()
    common.RESULTS = pathlib.Path(args.results)
    how = "the quick slice" if args.quick else ("the types asked for" if args.types else
                                               f"an evenly spaced sample (--limit {args.limit})")

    def write(done, final):
        note = ""
        if len(names) < len(types):
            note = f"**{len(names)} of the {len(types)} model types** ({how}).\n\n"
        if len(done) < len(names):
            note += (f"**Partial: {len(done)} of these {len(names)} types finished** "
                     f"({'interrupted' if final else 'still running'}).\n\n")
        sections = report(done, tools, time.perf_counter() - start, load_before, os.getloadavg(), started, note,
                          args.timeout)
        if final:
            write_result("prune_sweep", TITLE, sections)
        else:  # rewritten after each type, so that an interrupted run leaves its results
            with contextlib.redirect_stdout(io.StringIO()):
                write_result("prune_sweep", TITLE, sections)

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    results = {n: {"class": types[n][0], "mapping": types[n][1]} for n in names}
    try:
        results = sweep(names, types, tools, jobs=args.jobs, timeout=args.timeout, quiet=not args.verbose,
                        partial=lambda done: (results.update(done), write(done, final=False)))
    except KeyboardInterrupt:
        write(finished(results, tools), final=True)
        raise SystemExit(130)
    write(results, final=True)
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    main()
