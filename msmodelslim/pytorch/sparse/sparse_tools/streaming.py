"""Sparsify a Hugging Face checkpoint that need not fit in memory: one block of weights at a time.

The model is built without weights (parameters on the meta device, buffers real), the tensors outside the repeated
blocks (embeddings, final norm, LM head) are read from the checkpoint, and the calibration runs block by block
(``utils.sequential``): each block's weights are read from the checkpoint onto the execution device only for its
turn, sparsified, written to its own output shard and dropped. Memory holds the non-block tensors, one block and
the calibration activations of one block. The computation is the in-memory one, step for step, so the result is
the same bit for bit.

The output directory - safetensors shards with an index (``from_pretrained`` loads it), the other files of the
input directory (config, tokenizer) and the compact sparse file - is assembled under a temporary name beside it and
renamed only when complete; an error or an interrupt leaves nothing behind.
"""
import contextlib
import ctypes
import json
import os
import shutil
import tempfile
import time

import torch
from torch import nn

from msmodelslim.errors import CheckpointError
from msmodelslim.pytorch.sparse.sparse_tools.config import SparseConfig
from msmodelslim.pytorch.sparse.sparse_tools.engine import Sparsifier, check_dataset, target_layers
from msmodelslim.pytorch.sparse.sparse_tools.export import check_export_path, write_sparse
from msmodelslim.pytorch.utils.sequential import block_hidden, find_blocks, iterate_blocks
from msmodelslim.utils.checkpoint import (HF_WEIGHT_FILES, PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, current_umask,
                                          open_checkpoint)
from msmodelslim.utils.logging import logger

INDEX_NAME = "model.safetensors.index.json"
COMPACT_NAME = "model.sparse.safetensors"


def sparsify_checkpoint(model_dir, config, out_dir, dataset, device=None, export=None):
    """Sparsify the causal language model saved in ``model_dir`` (a Hugging Face directory of safetensors
    weights) as ``config`` says, from the calibration batches ``dataset`` (as for :meth:`Compressor.compress`),
    without loading it whole, and write the result to ``out_dir``: sharded safetensors with an index (load with
    ``AutoModelForCausalLM.from_pretrained(out_dir)``), the input directory's other files, and the compact sparse
    file (:func:`load_sparse`), ``out_dir/model.sparse.safetensors`` unless ``export`` names another path.
    ``device`` (default CPU) is where each block is calibrated; the blocks not being calibrated stay on disk.
    Returns the :class:`SparsityReport`, whose ``timings`` include the reading and writing (``io``).

    A model whose Linear layers are not all inside repeated blocks is loaded whole instead (an INFO line says so);
    the output is the same.

    Raises:
        TypeError: ``config`` is not a SparseConfig; a bad ``dataset`` (see ``compress``).
        ValueError: an empty ``dataset``, and the other errors of ``compress``.
        FileExistsError: ``out_dir`` exists (nothing is ever written over).
        CheckpointError: ``model_dir`` has no weights, a shard listed in its index is missing, a file is truncated
            or corrupt (the file is named), or the checkpoint lacks a tensor the model needs. Nothing is written.
    """
    if not isinstance(config, SparseConfig):
        raise TypeError(f"config must be SparseConfig, not {type(config).__name__}.")
    check_dataset(dataset)
    out_dir = os.fspath(out_dir)
    if export is not None:
        export = check_export_path(export)
    if os.path.lexists(out_dir):
        raise FileExistsError(f"out_dir '{out_dir}' already exists; give a new directory (nothing is overwritten).")
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise CheckpointError(f"The parent directory '{parent}' of out_dir does not exist.")
    files = _weight_files(model_dir)
    model = _skeleton(model_dir)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.", suffix=".tmp", dir=parent)
    try:
        os.chmod(staging, 0o777 & ~current_umask())  # the user's umask, not mkdtemp's 0700
        report = _sparsify(model_dir, model, config, dataset, files, staging, device, export)
        _copy_other_files(model_dir, staging)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _weight_files(model_dir):
    """``{tensor name: safetensors file}`` of the checkpoint in ``model_dir``, every file opened once to check it.

    Raises:
        CheckpointError: no weights, a pickle checkpoint, a missing shard, a truncated or corrupt file.
    """
    with open_checkpoint(model_dir) as checkpoint:
        path = checkpoint.path
        if not path.endswith((SAFETENSORS_SUFFIX, ".safetensors.index.json")):
            raise CheckpointError(f"'{path}' is a pickle checkpoint; streaming reads safetensors only (save it "
                                  "with save_pretrained(safe_serialization=True)).")
        for key in checkpoint.keys():  # opens every shard now: a missing or truncated one is named before any work
            checkpoint.shape(key)
        keys = checkpoint.keys()
    if path.endswith(SAFETENSORS_SUFFIX):
        return dict.fromkeys(keys, path)
    with open(path, encoding="utf-8") as handle:
        weight_map = json.load(handle)["weight_map"]
    return {key: os.path.join(os.path.dirname(path), shard) for key, shard in weight_map.items()}


def _skeleton(model_dir):
    """The model of ``model_dir`` with its parameters on the meta device and its buffers real (rotary tables)."""
    import transformers
    from accelerate import init_empty_weights

    try:
        config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
        with init_empty_weights(include_buffers=False):
            model = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError ... for configs it cannot use
        raise CheckpointError(f"'{model_dir}' does not describe a causal language model transformers can build "
                              f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]})") from exc
    model.tie_weights()  # tied names must share one Parameter, as after from_pretrained
    return model.eval()


def _sparsify(model_dir, model, config, dataset, files, staging, device, export):
    from msmodelslim.pytorch.sparse.sparse_tools import SparsityReport

    device = torch.device(device or "cpu")
    export = export or os.path.join(staging, COMPACT_NAME)
    blocks = _chained_blocks(model)
    reason = _unstreamable(model, blocks, files, config)
    if reason:
        logger.info("%s: %s; loading it whole instead of block by block.", type(model).__name__, reason)
        return _sparsify_in_memory(model_dir, config, dataset, staging, device, export)
    store = _BlockStore(model, files, blocks, staging, device)
    store.load_outside()
    sparsifier = Sparsifier(model, config, dataset, blocks=blocks, around_block=store.around, device=device)
    io_before = store.io_seconds
    results = sparsifier.run()
    timings = dict(sparsifier.timings)
    timings["forward"] -= store.io_seconds - io_before  # blocks were read and written during the run
    store.finish([f"{r.name}.weight" for r in results], {"sparsity_structure": config.pattern,
                                                         "method": config.algorithm}, export)
    timings["io"] = store.io_seconds
    return SparsityReport(results, config, timings)


def _unstreamable(model, blocks, files, config):
    """Why the model cannot be streamed block by block (a sentence), or None."""
    if not blocks:
        return "not a transformer family whose blocks are known to feed each other directly"
    prefixes = tuple(name + "." for name, _ in blocks)
    outside = [name for name in target_layers(model, config.ignore) if not name.startswith(prefixes)]
    if outside:
        return f"Linear layers outside its repeated blocks ({', '.join(outside[:3])})"
    unnamed = _unnamed(model, files)
    if unnamed:  # transformers renames some legacy names while loading; its own loader knows how
        return f"the checkpoint names its tensors differently from the model (no '{unnamed[0]}')"
    return None


def _load_whole(model_dir, device):
    """``AutoModelForCausalLM.from_pretrained`` in the checkpoint's dtype, refusing a checkpoint that would leave
    weights at their random initialisation."""
    import transformers

    try:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            model_dir, dtype="auto", trust_remote_code=False, output_loading_info=True)
    except Exception as exc:
        raise CheckpointError(f"'{model_dir}' cannot be loaded: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:200]}") from exc
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    missing = [key for key in info.get("missing_keys", ()) if key not in tied]
    if missing:
        raise CheckpointError(f"The checkpoint in '{model_dir}' has no tensor '{sorted(missing)[0]}' "
                              f"({len(missing)} missing), which {type(model).__name__} needs.")
    return model.to(device).eval()


def _sparsify_in_memory(model_dir, config, dataset, staging, device, export):
    """The model whole, with transformers' own loader and writer: Compressor, save_pretrained, export."""
    from msmodelslim.pytorch.sparse.sparse_tools import Compressor

    start = time.perf_counter()
    model = _load_whole(model_dir, device)
    io_seconds = time.perf_counter() - start
    compressor = Compressor(model, config)
    compressor.compress(dataset)
    start = time.perf_counter()
    model.save_pretrained(staging)
    compressor.export(export)
    report = compressor.report()
    report.timings["io"] = io_seconds + time.perf_counter() - start
    return report


class _BlockStore:
    """Where each block's weights are read from and written to while streaming. Files are opened for one read and
    closed again, so that no memory map keeps the pages of blocks already done."""

    def __init__(self, model, files, blocks, staging, device):
        self.model = model
        self.files = dict(files)
        self.staging = staging
        self.device = device
        self.io_seconds = 0.0
        self._shards = {name: f"model-{i + 2:05d}-of-{len(blocks) + 1:05d}.safetensors"
                        for i, (name, _) in enumerate(blocks)}
        self._rest = f"model-00001-of-{len(blocks) + 1:05d}.safetensors"
        self._blocks = dict(blocks)
        self._block_prefixes = tuple(name + "." for name in self._blocks)

    def _groups(self, prefix, buffers=False):
        """:func:`_tied_groups` under ``prefix``; None: the tensors of no block."""
        if prefix is None:
            return _tied_groups(self.model, "", buffers, outside=self._block_prefixes)
        return _tied_groups(self.model, prefix, buffers)

    def _materialise(self, prefix, files):
        """Replace the meta parameters under ``prefix`` by tensors read from ``files`` (``{name: file}``) onto
        the device; tied names get one Parameter."""
        from safetensors import safe_open

        start = time.perf_counter()
        groups = list(self._groups(prefix).values())
        stored = {names[0]: next(name for name in names if name in files) for names in groups}
        by_file = {}
        for first, key in stored.items():
            by_file.setdefault(files[key], []).append(first)
        tensors = {}
        for path, firsts in by_file.items():
            with safe_open(path, framework="pt", device="cpu") as handle:
                for first in firsts:
                    tensors[first] = handle.get_tensor(stored[first]).to(self.device)
        for names in groups:
            parameter = nn.Parameter(tensors[names[0]], requires_grad=False)
            for name in names:
                module_name, _, attribute = name.rpartition(".")
                self.model.get_submodule(module_name)._parameters[attribute] = parameter
        self.io_seconds += time.perf_counter() - start

    def load_outside(self):
        """Read every parameter that belongs to no block."""
        self._materialise(None, self.files)


    @contextlib.contextmanager
    def around(self, name, block):
        """A block's turn: read its weights (the sparsified ones if an earlier pass wrote them), then write them to
        its shard and put the block back on the meta device."""
        with self.reading(name, block):
            yield
            start = time.perf_counter()
            shard = os.path.join(self.staging, self._shards[name])
            state = self._state(name + ".")
            _save(state, shard)
            self.files.update(dict.fromkeys(state, shard))  # a later pass reads the sparsified weights
            self.io_seconds += time.perf_counter() - start

    def _written(self, name):
        shard = os.path.join(self.staging, self._shards[name])
        return any(file == shard for file in self.files.values())

    @contextlib.contextmanager
    def reading(self, name, block):
        """A block's turn without writing: read its weights, then put it back on the meta device."""
        self._materialise(name + ".", self.files)
        yield
        for module in block.modules():
            for attribute, parameter in module._parameters.items():
                if parameter is not None:
                    module._parameters[attribute] = nn.Parameter(parameter.to("meta"), requires_grad=False)
        _return_freed_memory()

    def _state(self, prefix):
        """The model's tensors under ``prefix`` that the checkpoint holds, on CPU."""
        state = {}
        for names in self._groups(prefix, buffers=True).values():
            stored = [name for name in names if name in self.files]
            if stored:
                state[stored[0]] = self.model.get_parameter(names[0]).detach() if _is_parameter(
                    self.model, names[0]) else self.model.get_buffer(names[0])
        return {key: value.to("cpu").contiguous() for key, value in state.items()}

    def finish(self, sparse_names, metadata, export):
        """Write the blocks no pass wrote (none when nothing was sparsified), the non-block tensors, the index
        and the compact file (reading the shards back one tensor at a time)."""
        for name, block in self._blocks.items():
            if not self._written(name):
                with self.around(name, block):
                    pass
        start = time.perf_counter()
        state = self._state(None)
        path = os.path.join(self.staging, self._rest)
        _save(state, path)
        self.files.update(dict.fromkeys(state, path))
        weight_map = {key: os.path.basename(file) for key, file in self.files.items()
                      if os.path.dirname(file) == self.staging}
        # always an index, also for one file: tools that glob *.safetensors then skip the compact file
        total = sum(os.path.getsize(os.path.join(self.staging, f)) for f in set(weight_map.values()))
        with open(os.path.join(self.staging, INDEX_NAME), "w", encoding="utf-8") as handle:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                      handle, indent=2)
        tied = {}
        for names in _tied_groups(self.model).values():
            stored = [name for name in names if name in weight_map]
            tied.update({name: stored[0] for name in names if stored and name not in weight_map})
        write_sparse(export, self._stored_tensors(weight_map), set(sparse_names), metadata, tied)
        self.io_seconds += time.perf_counter() - start

    def _stored_tensors(self, weight_map):
        """A function returning an iterator over ``(key, tensor)`` of the written shards, one tensor at a time."""
        def iterate():
            from safetensors import safe_open

            for shard in sorted(set(weight_map.values())):
                with safe_open(os.path.join(self.staging, shard), framework="pt", device="cpu") as handle:
                    for key in handle.keys():
                        yield key, handle.get_tensor(key)
        return iterate


def _return_freed_memory():
    """Hand the memory of the block just dropped back to the system (glibc keeps freed heap memory otherwise, and
    the resident size would grow block after block); nothing happens where ``malloc_trim`` does not exist."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _chained_blocks(model):
    """The blocks of a recognised transformer family (their outputs are the next block's inputs, which a streamed
    run cannot check the way the in-memory one does on a whole forward pass), else []."""
    from msmodelslim.pytorch.prune.structure import detect_family

    _, layers = detect_family(model)
    return find_blocks(model) if layers else []


def _is_parameter(model, name):
    module_name, _, attribute = name.rpartition(".")
    return attribute in model.get_submodule(module_name)._parameters


def _unnamed(model, files):
    """The model's tensors (first of each tied group) that ``files`` holds under none of their names."""
    return [names[0] for names in _tied_groups(model).values() if not any(name in files for name in names)]


def _tied_groups(model, prefix="", buffers=False, outside=()):
    """``{id(tensor): [names]}`` of the model's parameters (and persistent buffers) - tied ones together - whose
    names start with ``prefix`` and with none of the prefixes ``outside``."""
    groups = {}
    named = list(model.named_parameters(remove_duplicate=False))
    if buffers:
        persistent = set(model.state_dict(keep_vars=True))
        named += [(name, buffer) for name, buffer in model.named_buffers(remove_duplicate=False)
                  if name in persistent]
    for name, tensor in named:
        if name.startswith(prefix) and not (outside and name.startswith(outside)):
            groups.setdefault(id(tensor), []).append(name)
    return groups


def _save(state, path):
    from safetensors.torch import save_file

    save_file(state, path, metadata={"format": "pt"})


def _copy_other_files(model_dir, staging):
    """Copy the input directory's files that are not weights (config, generation config, tokenizer)."""
    for entry in os.scandir(model_dir):
        weights = entry.name in HF_WEIGHT_FILES or entry.name.endswith(
            (SAFETENSORS_SUFFIX, ".safetensors.index.json", ".bin.index.json") + PICKLE_SUFFIXES)
        if entry.is_file() and not weights and not os.path.exists(os.path.join(staging, entry.name)):
            shutil.copy2(entry.path, os.path.join(staging, entry.name))


def streamed_perplexity(model_dir, token_chunks, batch_size=4, device=None):
    """The perplexity of the causal language model in ``model_dir`` on ``token_chunks`` (``[N, L]``), computed
    one block at a time (as :func:`msmodelslim.pytorch.utils.evaluation.perplexity` computes it on the whole
    model): the block outputs of every batch are computed block after block, then the model's head runs on the
    last block's outputs.

    Raises:
        CheckpointError: as :func:`sparsify_checkpoint`.
    """
    from msmodelslim.pytorch.utils.evaluation import perplexity

    device = torch.device(device or "cpu")
    files = _weight_files(model_dir)
    model = _skeleton(model_dir)
    blocks = _chained_blocks(model)
    if not blocks or _unnamed(model, files):
        return perplexity(_load_whole(model_dir, device), token_chunks, batch_size)
    store = _BlockStore(model, files, blocks, None, device)
    store.load_outside()
    batches = [{"input_ids": chunk} for chunk in token_chunks.split(batch_size)]
    for step in iterate_blocks(model, blocks, batches, "token_chunks", "perplexity", store.reading, device):
        finals = step.run()
    with _replaying(blocks, finals, step.returns_tuple):
        return perplexity(model, token_chunks, batch_size)


@contextlib.contextmanager
def _replaying(blocks, finals, returns_tuple):
    """Blocks that hand their input on, the last one returning ``finals`` (one per call, in order): the model's
    forward then runs its head on hidden states computed elsewhere."""
    calls = iter(finals)

    def wrap(hidden):
        return (hidden,) if returns_tuple else hidden

    def hand_on(*args, **kwargs):
        return wrap(block_hidden(args, kwargs))

    def replay(*args, **kwargs):
        return wrap(next(calls))

    for _, block in blocks[:-1]:
        block.forward = hand_on
    blocks[-1][1].forward = replay
    try:
        yield
    finally:
        for _, block in blocks:
            del block.forward
