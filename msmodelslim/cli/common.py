"""What every subcommand shares: user errors, the --out options, reading calibration text and models."""
import argparse
import contextlib
import importlib
import json
import os
import sys
import traceback

from msmodelslim.errors import ModelslimError


class UsageError(ModelslimError, ValueError):
    """A mistake in the command line or an unusable input: printed as one line, exit code 2."""

    code = 2

    def __str__(self):
        return self.message


def positive_ratio(text):
    """A float in (0, 1), for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def existing_path(text, what):
    if not os.path.exists(text):
        raise UsageError(f"{what} '{text}' does not exist")
    return text


def add_output_arguments(parser, help_text="output directory (written only if the job succeeds)", **kwargs):
    """``--out`` and ``--overwrite``, the same for every subcommand."""
    parser.add_argument("--out", help=f"{help_text}; refused if it exists and is not empty, unless --overwrite",
                        **kwargs)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it holds an earlier msmodelslim result (never other directories)")


@contextlib.contextmanager
def reading(what, path):
    """Turn any error raised while reading the user's input ``path`` into a one-line UsageError naming ``what``.

    KeyboardInterrupt passes through unchanged.
    """
    try:
        yield
    except UsageError:
        raise
    except ModelslimError as exc:
        raise UsageError(f"{what}: {exc.message}") from exc
    except Exception as exc:  # transformers, safetensors, gguf, tokenizers ... raise many types on bad files
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UsageError(f"{what} '{path}' cannot be read: {first_line}") from exc


def call_factory(spec, option):
    """Import ``package.module:callable`` (the current directory first, as ``python -m`` does) and call it with no
    arguments; returns what it returns.

    Raises:
        UsageError: malformed ``spec``, the module cannot be imported, no such callable, or it needs arguments.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"{option} must look like package.module:callable, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except (ImportError, TypeError, ValueError) as exc:  # TypeError/ValueError: a relative or malformed name
        raise UsageError(f"cannot import '{module_name}' for {option}: {exc} (searched the current directory and "
                         f"PYTHONPATH)") from None
    target = getattr(module, attribute, None)
    if not callable(target):
        raise UsageError(f"'{module_name}' has no callable '{attribute}' ({option})")
    try:
        return target()
    except TypeError as exc:
        if len(traceback.extract_tb(exc.__traceback__)) > 1:  # raised inside the user's code, not by the call
            raise
        raise UsageError(f"{option} {spec} cannot be called without arguments: {exc}") from None


def calibration_texts(source, option="--calib", keep_labels=False):
    """Texts for calibration: ``wiki`` (the Wikipedia train split), a ``.txt`` file (texts separated by blank lines;
    a file without any blank line: one text per line) or a
    ``.jsonl`` file (one ``{"text": ...}`` per line). ``keep_labels``: a ``.jsonl`` file whose records carry a
    ``"label"`` gives ``{"text", "label"}`` records instead (every record must then have an integer label >= 0).

    Raises:
        UsageError: the file is missing, a directory, not UTF-8, of another kind, or a line is not a text record;
            the message names the file and the line.
    """
    from msmodelslim import assets

    if source == "wiki":
        return assets.wiki_split()[0]
    if not source.endswith((".txt", ".jsonl")):
        raise UsageError(f"{option} must be 'wiki', a .txt or a .jsonl file, got '{source}'")
    existing_path(source, f"{option} file")
    if not os.path.isfile(source):
        raise UsageError(f"{option} '{source}' is not a regular file")
    text = _read_utf8(source, option)
    if source.endswith(".txt"):
        parts = [part for part in text.split("\n\n") if part.strip()]
        if len(parts) == 1:  # no blank line anywhere: one text per line
            parts = [line for line in text.splitlines() if line.strip()]
        return parts
    return _jsonl_texts(source, text, option, keep_labels)


def _read_utf8(path, option):
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UsageError(f"{option} '{path}' is not UTF-8 text: byte {exc.start} (line {line}) cannot be "
                         f"decoded") from None


def _encodable(text):
    """False for text that no tokenizer can take, e.g. a lone surrogate written as an escape in JSON."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _jsonl_texts(path, text, option, keep_labels=False):
    texts, labelled = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        value = record.get("text") if isinstance(record, dict) else None
        if not isinstance(value, str) or not _encodable(value):
            raise UsageError(f"{option} '{path}', line {number}: expected a JSON object with a string 'text' "
                             f"field, got {line.strip()[:80]!r}")
        if not keep_labels:
            texts.append(value)
            continue
        if labelled is None:
            labelled = "label" in record
        if labelled != ("label" in record):
            raise UsageError(f"{option} '{path}', line {number}: every record or none must have a 'label'")
        label = record.get("label")
        if labelled and (isinstance(label, bool) or not isinstance(label, int) or label < 0):
            raise UsageError(f"{option} '{path}', line {number}: 'label' must be an integer >= 0, got {label!r}")
        texts.append({"text": value, "label": label} if labelled else value)
    return texts


def token_chunks(tokenizer, texts, samples, seq_len, source="wiki"):
    """``samples`` chunks of ``seq_len`` tokens of the calibration texts (a user error when they are too short)."""
    from msmodelslim.assets import token_chunks as chunks

    try:
        return chunks(tokenizer, texts, samples, seq_len, name=f"the calibration text (--calib {source})")
    except ValueError as exc:
        raise UsageError(f"{exc} Lower --samples or --seq-len.") from None


def load_causal_lm(path):
    """``(model, tokenizer)`` from a Hugging Face directory or a GGUF file, in float32 and eval mode.

    Never runs code shipped with the model (``trust_remote_code=False``).

    Raises:
        UsageError: the path is missing, holds no weights, cannot be read (corrupt, truncated, custom code), or is
            not a causal language model (a head that would be initialised at random is refused).
    """
    existing_path(path, "MODEL")
    if path.endswith(".gguf"):
        with reading("MODEL", path):
            return _load_gguf(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UsageError(f"MODEL must be a Hugging Face directory (with config.json) or a .gguf file, got '{path}'")
    from msmodelslim.utils.checkpoint import resolve_weight_path

    with reading("MODEL", path):
        resolve_weight_path(path)
        check_causal_lm_config(path)
    return _load_hf_causal_lm(path)


def refuse_remote_code(what, path):
    """msmodelslim never runs Python code shipped with a model: a config that asks for it (``auto_map``) is refused.

    Raises:
        UsageError: ``config.json`` or ``tokenizer_config.json`` of ``path`` (a directory or a config file) has an
            ``auto_map`` entry.
    """
    files = [path] if os.path.isfile(path) else [os.path.join(path, n) for n in ("config.json",
                                                                                    "tokenizer_config.json")]
    for name in files:
        if not os.path.isfile(name):
            continue
        with reading(what, name), open(name, encoding="utf-8") as handle:
            content = json.load(handle)
        if isinstance(content, dict) and content.get("auto_map"):
            raise UsageError(f"{what} '{path}' asks to run its own Python code ({os.path.basename(name)} has "
                             f"'auto_map'); msmodelslim never runs code shipped with a model")


def check_causal_lm_config(path):
    """Refuse a model directory that ships its own code or is not a causal language model.

    Raises:
        UsageError: naming the path and what it is.
    """
    from transformers import AutoConfig

    refuse_remote_code("MODEL", path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        raise UsageError(f"MODEL '{path}' is a {architectures[0]}, not a causal language model; `msmodelslim "
                         f"sparse` measures next-token perplexity. Sparsify other models with the Python API "
                         f"(Compressor)")


def _load_hf_causal_lm(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with reading("MODEL", path):
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False,
                                                           output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    missing = [key for key in info.get("missing_keys", ()) if not _is_tied(model, key)]
    if missing:
        raise UsageError(f"MODEL '{path}' does not hold a complete causal language model: {len(missing)} weight(s) "
                         f"would be initialised at random ({', '.join(sorted(missing)[:3])} ...)")
    return model.eval(), tokenizer


def _is_tied(model, key):
    """A missing key that is a tied copy of a stored one (lm_head tied to the embeddings) is not missing."""
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
    return key in tied


def _load_gguf(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-tagged config cannot be saved
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    return model.eval(), tokenizer


def directory_size(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
