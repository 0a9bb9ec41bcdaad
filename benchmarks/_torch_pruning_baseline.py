"""One model of the test zoo pruned with plain torch-pruning, configured as torch-pruning's own
``examples/transformers`` and ``examples/LLMs`` scripts configure it: ``BasePruner`` (``MetaPruner``) with
group-magnitude importance, ``num_heads={q/k/v or fused qkv linear: heads}``, ``prune_num_heads=True`` and
``prune_head_dims=False`` (whole heads go), ``out_channel_groups`` for a fused gate_up projection, the Swin patch
merging pruner of prune_hf_swin.py where a model has one, the classifier ignored, and after pruning the attention
attributes forward() reads patched (``num_heads``, ``head_dim``, ``all_head_size``, ``split_size``, ...) with the
config's head counts and hidden size, as prune_llm.py does. A channel ratio is searched to land at the parameter
budget, then ``pruning_history()`` is replayed on a fresh model. Prints one JSON line. Run by bench_prune.py in a
subprocess (it may hang); ``prune_to_budget`` is also used by bench_prune_sweep.py.
"""
import copy
import json
import sys
import warnings

import torch
from torch import nn

import common  # noqa: F401  (sets up paths)

warnings.filterwarnings("ignore")

# child names of separate q/k/v projections, and of fused ones, as the examples look them up
QKV_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q", "k", "v"),
             ("query_proj", "key_proj", "value_proj"), ("q_lin", "k_lin", "v_lin"), ("to_q", "to_k", "to_v"),
             ("wq", "wk", "wv"), ("q_linear", "k_linear", "v_linear"))
FUSED_QKV_NAMES = ("qkv_proj", "qkv", "c_attn", "Wqkv", "query_key_value", "in_proj")
HEAD_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")
KV_HEAD_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "key_value_proj_dim", "d_kv", "head_size")
ALL_HEAD_ATTRS = ("all_head_size", "inner_dim")


class Attention:
    """One attention module: its q/k/v (or fused qkv) linears and the head counts before pruning."""

    def __init__(self, name, module, linears, heads, kv_heads, head_dim, fused):
        self.name, self.module, self.linears = name, module, linears
        self.heads, self.kv_heads, self.head_dim, self.fused = heads, kv_heads, head_dim, fused


def _config_heads(config):
    """``(heads, kv_heads)`` of the nearest text config, or ``(None, None)``."""
    for cfg in (config, getattr(config, "get_text_config", lambda: None)()):
        heads = getattr(cfg, "num_attention_heads", None) if cfg is not None else None
        if isinstance(heads, int):
            kv = getattr(cfg, "num_key_value_heads", None)
            return heads, kv if isinstance(kv, int) else heads
    return None, None


def find_attention(model):
    """Every attention module with Linear q/k/v (or a fused Linear qkv) whose head count is known."""
    found = []
    config_heads, config_kv = _config_heads(getattr(model, "config", None))
    for name, module in model.named_modules():
        children = dict(module.named_children())
        linears, fused = None, False
        for names in QKV_NAMES:
            if all(isinstance(children.get(n), nn.Linear) for n in names):
                linears = [children[n] for n in names]
                break
        if linears is None:
            fused_name = next((n for n in FUSED_QKV_NAMES if isinstance(children.get(n), nn.Linear)), None)
            if fused_name is None:
                continue
            linears, fused = [children[fused_name]], True
        width = linears[0].out_features // (3 if fused else 1)
        heads = next((getattr(module, a) for a in HEAD_ATTRS if isinstance(getattr(module, a, None), int)), None)
        head_dim = next((getattr(module, a) for a in HEAD_DIM_ATTRS
                         if isinstance(getattr(module, a, None), int)), None)
        if heads is None and head_dim:
            heads = width // head_dim
        if heads is None:
            heads = getattr(getattr(module, "config", None), "num_attention_heads", None) or config_heads
        if not isinstance(heads, int) or heads < 1 or width % heads:
            continue
        head_dim = width // heads
        kv = next((getattr(module, a) for a in KV_HEAD_ATTRS if isinstance(getattr(module, a, None), int)), None)
        if kv is None and not fused:
            kv = linears[1].out_features // head_dim if linears[1].out_features % head_dim == 0 else None
        kv = kv or (config_kv if heads == config_heads else heads)
        if fused and kv != heads:
            continue  # a fused qkv with grouped-query attention: no head layout torch-pruning can follow
        found.append(Attention(name, module, linears, heads, kv, head_dim, fused))
    return found


def pruner_options(model, attention):
    """The ``num_heads`` and ``out_channel_groups`` arguments of the examples (``nn.MultiheadAttention`` as in
    torch-pruning's torchvision tests: one channel group per head)."""
    num_heads, groups = {}, {}
    for att in attention:
        if att.fused:
            num_heads[att.linears[0]] = att.heads
        else:
            q, k, v = att.linears
            num_heads[q], num_heads[k], num_heads[v] = att.heads, att.kv_heads, att.kv_heads
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):  # tests/test_torchvision_models.py of torch-pruning
            groups[module] = module.num_heads
        gate_up = getattr(module, "gate_up_proj", None)
        if isinstance(gate_up, nn.Linear):
            groups[gate_up] = 2
    return num_heads, groups


def patch_attention(model, attention):
    """Set the attributes forward() reads from the pruned shapes (whole heads went, head_dim stayed), as the
    examples do after ``pruner.step()``; returns ``{attention name: heads}``."""
    heads_now = {}
    for att in attention:
        m = att.module
        width = att.linears[0].out_features // (3 if att.fused else 1)
        heads = max(width // att.head_dim, 1)
        kv = heads if att.fused or att.kv_heads == att.heads else max(att.linears[1].out_features // att.head_dim, 1)
        for attr in HEAD_ATTRS:
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, heads)
        for attr in KV_HEAD_ATTRS:
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, kv)
        if isinstance(getattr(m, "num_key_value_groups", None), int):
            m.num_key_value_groups = max(heads // kv, 1)
        for attr in HEAD_DIM_ATTRS:
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, att.head_dim)
        for attr in ALL_HEAD_ATTRS + ("split_size", "embed_dim", "hidden_size"):
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, width)  # prune_llm.py: m.hidden_size = q_proj.out_features
        heads_now[att.name] = (heads, kv)
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    values = set(heads_now.values())
    if text is not None and len(values) == 1 and isinstance(getattr(text, "num_attention_heads", None), int):
        (heads, kv), = values  # prune_llm.py: model.config.num_attention_heads = m.num_heads
        text.num_attention_heads = heads
        if isinstance(getattr(text, "num_key_value_heads", None), int):
            text.num_key_value_heads = kv
    embeddings = _embeddings(model, "get_input_embeddings")
    if text is not None and isinstance(embeddings, nn.Embedding) and isinstance(getattr(text, "hidden_size", None),
                                                                                 int):
        text.hidden_size = embeddings.embedding_dim  # prune_llm.py: model.config.hidden_size = lm_head.in_features
    return heads_now


def _embeddings(model, getter):
    """``model.get_input_embeddings()`` / ``get_output_embeddings()``, or None where the model has none."""
    try:
        return getattr(model, getter)() if hasattr(model, getter) else None
    except (NotImplementedError, AttributeError):
        return None


def head_layer(model):
    """The layer the examples leave out: the output embedding (lm_head), else the last Linear."""
    out = _embeddings(model, "get_output_embeddings")
    if isinstance(out, nn.Linear):
        return [out]
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]


def main_output(out):
    """The output tensor: ``.logits`` of a Hugging Face output, else its first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    items = out.values() if isinstance(out, dict) else out
    for item in items:
        found = main_output(item) if isinstance(item, (tuple, list, dict)) else item
        if isinstance(found, torch.Tensor):
            return found
    return None


def call(model, example):
    with torch.no_grad():
        return model(**example) if isinstance(example, dict) else model(example)


def _patch_merging_pruner():
    """``SwinPatchMergingPruner`` of examples/transformers/prune_hf_swin.py: the merged 4x channels of a Swin
    patch merging layer follow its input channels."""
    import torch_pruning as tp

    class PatchMergingPruner(tp.BasePruningFunc):
        def prune_out_channels(self, layer, idxs):
            tp.prune_linear_out_channels(layer.reduction, idxs)
            return layer

        def prune_in_channels(self, layer, idxs):
            dim = layer.dim
            repeated = list(idxs) + [i + dim for i in idxs] + [i + 2 * dim for i in idxs] + [i + 3 * dim
                                                                                            for i in idxs]
            tp.prune_linear_in_channels(layer.reduction, repeated)
            tp.prune_layernorm_out_channels(layer.norm, repeated)
            return layer

        def get_out_channels(self, layer):
            return layer.reduction.out_features

        def get_in_channels(self, layer):
            return layer.dim

    return PatchMergingPruner()


def customized(model):
    """``customized_pruners`` and ``root_module_types`` as prune_hf_swin.py sets them, where the model has Swin-style
    patch merging (a ``reduction`` Linear over 4 x ``dim`` channels and its ``norm``)."""
    merging = {type(m) for m in model.modules() if type(m).__name__.endswith("PatchMerging")
               and isinstance(getattr(m, "reduction", None), nn.Linear) and isinstance(getattr(m, "dim", None), int)
               and isinstance(getattr(m, "norm", None), nn.LayerNorm)
               and m.reduction.in_features == 4 * m.dim}
    if not merging:
        return {}
    return {"customized_pruners": {cls: _patch_merging_pruner() for cls in merging},
            "root_module_types": (nn.Linear, nn.LayerNorm, *merging)}


def prune_once(model, example, ratio):
    """Prune ``model`` in place at one channel/head ratio; returns the pruner."""
    import torch_pruning as tp

    attention = find_attention(model)
    num_heads, groups = pruner_options(model, attention)
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
        global_pruning=False, pruning_ratio=ratio, ignored_layers=head_layer(model),
        num_heads=num_heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
        out_channel_groups=groups, output_transform=lambda out: main_output(out).sum(), **customized(model))
    for group in pruner.step(interactive=True):
        group.prune()
    patch_attention(model, attention)
    return pruner


def count(model):
    return sum(p.numel() for p in model.parameters())


def prune_to_budget(model, example, target, steps=7, tolerance=0.01):
    """Search the ratio whose pruned copy keeps ``target`` of the parameters (never more than 2 points below).

    Returns ``(pruned copy, pruner, kept fraction)``; exceptions of torch-pruning propagate.
    """
    total = count(model)
    best, low, high, ratio = None, 0.0, 0.9, 0.3  # 0.3: about half of the parameters when in and out shrink
    for _ in range(steps):
        pruned = copy.deepcopy(model)
        pruner = prune_once(pruned, example, ratio)
        kept = count(pruned) / total
        if kept >= target - 0.02 and (best is None or abs(kept - target) < abs(best[2] - target)):
            best = (pruned, pruner, kept)
        if abs(kept - target) <= tolerance:
            break
        low, high = (ratio, high) if kept > target else (low, ratio)
        ratio = (low + high) / 2
    if best is None:  # every ratio tried went below the budget: report the last one
        best = (pruned, pruner, kept)
    return best


def replay(fresh, example, pruner):
    """Redo ``pruner.pruning_history()`` on an unpruned copy and patch its attention the same way."""
    import torch_pruning as tp

    attention = find_attention(fresh)
    custom = customized(fresh).get("customized_pruners")
    graph = tp.DependencyGraph().build_dependency(fresh, example, customized_pruners=custom,
                                                  output_transform=lambda out: main_output(out).sum())
    graph.load_pruning_history(pruner.pruning_history())
    patch_attention(fresh, attention)
    return fresh


def run(name, target):
    from zoo.registry import ZOO, logits

    build = ZOO[name]
    model, inputs = build()
    example = inputs.kwargs if hasattr(inputs, "kwargs") else inputs
    pruned, pruner, kept = prune_to_budget(model, example, target)
    out = logits(pruned, inputs)
    fresh, _ = build()
    replay(fresh, example, pruner)
    fresh.load_state_dict(pruned.state_dict())
    replayed = torch.allclose(logits(fresh, inputs), out, atol=1e-5)
    return {"kept": kept, "replayed": bool(replayed)}


if __name__ == "__main__":
    name, target = sys.argv[1], float(sys.argv[2])
    try:
        result = run(name, target)
    except Exception as exc:  # reported as a failure of the baseline
        result = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
    print(json.dumps(result))
