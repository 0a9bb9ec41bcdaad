"""Transformer weight pruning: load a big checkpoint into a smaller model of the same architecture.

Usage (as documented by msModelSlim)::

    from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
    prune_config = PruneConfig()
    prune_config.set_steps(['prune_blocks', 'prune_bert_intra_block']).add_blocks_params(
        pattern="bert.encoder.layer.(\\d+).", layer_id_map={0: 0, 1: 2, 2: 4, 3: 6, 4: 8, 5: 10, 6: 11})
    prune_model_weight(small_model, prune_config, weight_file_path="/path/bert_large.pt")

By default the intra-block steps keep the first rows/columns, exactly as the original; ``set_importance("weight")``
or ``set_importance("activation", dataset)`` chooses the heads, FFN neurons and hidden channels to keep by
importance instead, slicing every coupled tensor with the same indices.

This module imports no framework: :func:`prune_model_weight` hands a PyTorch ``nn.Module`` to
``msmodelslim.pytorch.prune.transformer_prune`` and a MindSpore ``nn.Cell`` to
``msmodelslim.mindspore.prune.transformer_prune``, importing only the backend the model needs.
"""
import os
import re
import sys

from msmodelslim.utils.checks import check_input_path, is_int

STEPS = ("prune_blocks", "prune_bert_intra_block", "prune_vit_intra_block")
IMPORTANCE = ("first", "weight", "activation")
AUTO = "auto"


class PruneConfig:
    """Steps and parameters of :func:`prune_model_weight`. Every setter returns the config, so calls chain."""

    def __init__(self):
        self.prune_state_dict_steps = []
        self.prune_blocks_params = []
        self.importance = "first"
        self.importance_dataset = None
        self.importance_model = None
        self.strict = True
        self.report = None  # what the last prune_model_weight kept (layers, heads, neurons, hidden channels)

    def set_steps(self, steps):
        """Set the steps, run in list order: ``"prune_blocks"``, ``"prune_bert_intra_block"``,
        ``"prune_vit_intra_block"`` (names are checked by :func:`prune_model_weight`).

        Raises:
            ValueError: empty, or an element is not a str.
            TypeError: not a list.
        """
        if not steps:
            raise ValueError("Steps can not be empty!")
        if not isinstance(steps, list):
            raise TypeError(f"steps must be list, not {type(steps).__name__}.")
        if not all(isinstance(step, str) for step in steps):
            raise ValueError("Element in steps is invalid. Should be all str.")
        self.prune_state_dict_steps = list(steps)
        return self

    def add_blocks_params(self, pattern, layer_id_map):
        """Add a renaming pass for ``prune_blocks``.

        ``pattern`` is a regular expression matched at the start of each checkpoint key, with exactly one capture
        group, the layer id; ``layer_id_map`` maps a small-model layer id to the checkpoint layer id it takes
        (several small layers may take the same one). ``layer_id_map="auto"`` keeps, for each layer the small
        model has, a checkpoint layer of highest block influence on the calibration data of
        :meth:`set_importance` (in order), measured in the big model.

        Raises:
            TypeError: ``pattern`` not a str, ``layer_id_map`` not a dict or ``"auto"``, or ids not ints.
            ValueError: ``pattern`` is not a valid expression with exactly one capture group.
        """
        if not isinstance(pattern, str):
            raise TypeError(f"pattern must be str, not {type(pattern).__name__}.")
        try:
            groups = re.compile(pattern).groups
        except re.error as exc:
            raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
        if groups != 1:
            raise ValueError(f"pattern {pattern!r} must have exactly one capture group (the layer id), not {groups}.")
        if layer_id_map == AUTO:
            self.prune_blocks_params.append({"pattern": pattern, "layer_id_map": AUTO})
            return self
        if not isinstance(layer_id_map, dict):
            raise TypeError(f"layer_id_map must be dict, not {type(layer_id_map).__name__}. (or the string 'auto')")
        for layer_after, layer_before in layer_id_map.items():
            if not is_int(layer_after):
                raise TypeError(f"layer_after must be int, not {type(layer_after).__name__}.")
            if not is_int(layer_before):
                raise TypeError(f"layer_before must be int, not {type(layer_before).__name__}.")
        self.prune_blocks_params.append({"pattern": pattern, "layer_id_map": dict(layer_id_map)})
        return self

    def set_qkv_keys(self, qkv_keys):
        """Name the fused q/k/v tensors for ``prune_vit_intra_block`` by substrings (e.g. ``["qkv"]``).

        Raises:
            TypeError: not a list of str.
        """
        if not isinstance(qkv_keys, list) or not all(isinstance(k, str) for k in qkv_keys):
            raise TypeError("qkv_keys must be a list of str.")
        self.qkv_keys = list(qkv_keys)
        return self

    def set_importance(self, kind, dataset=None, model=None):
        """Choose how the intra-block steps pick what to keep.

        ``"first"`` (default): the first rows/columns, as the original. ``"weight"``: data-free weight norms.
        ``"activation"``: mean activations on ``dataset`` (a list of batches: Tensor, list/tuple or dict) in the
        big ``model``; without ``model``, it is loaded from the checkpoint when that is a Hugging Face directory.
        For MindSpore, ``model`` (the big Cell, holding the checkpoint's weights) is required, and each batch is
        a ``mindspore.Tensor`` (``cell(x)``), a tuple/list of Tensors (``cell(*x)``) or a dict of keyword
        arguments (``cell(**x)``); the batches run in PyNative mode.
        ``dataset`` and ``model`` also serve ``layer_id_map="auto"``, whatever the kind.

        Raises:
            ValueError: an unknown kind; ``"activation"`` without a dataset; a dataset that is not a non-empty list.
            TypeError: ``model`` is neither a ``torch.nn.Module`` nor a ``mindspore.nn.Cell``.
        """
        if kind not in IMPORTANCE:
            raise ValueError(f"importance must be one of {list(IMPORTANCE)}, got {kind!r}.")
        if kind == "activation" and dataset is None:
            raise ValueError("importance 'activation' needs dataset: a non-empty list of calibration batches.")
        if dataset is not None and (not isinstance(dataset, list) or not dataset):
            raise ValueError(f"dataset must be a non-empty list of calibration batches, got {type(dataset).__name__}"
                             f"{' (empty)' if isinstance(dataset, list) else ''}.")
        if model is not None and model_framework(model) is None:
            raise TypeError(f"model must be a torch.nn.Module or a mindspore.nn.Cell, not {type(model).__name__}.")
        self.importance, self.importance_dataset, self.importance_model = kind, dataset, model
        return self

    def set_strict(self, strict=True):
        """With ``strict=False`` parameters the checkpoint cannot fill keep their values (logged at WARNING)
        instead of raising."""
        self.strict = bool(strict)
        return self

    def get(self, config_name, default=None):
        """The attribute ``config_name``, else ``default`` when truthy.

        Raises:
            ValueError: neither exists (the message names ``config_name``).
        """
        if hasattr(self, config_name):
            return getattr(self, config_name)
        if default:
            return default
        raise ValueError(f"config_name not in PruneConfig: {config_name!r} is not set.")


def model_framework(model):
    """``"torch"`` for a ``torch.nn.Module``, ``"mindspore"`` for a ``mindspore.nn.Cell``, else None.

    A framework that is not imported yet cannot have made ``model``, so none is imported here.
    """
    torch = sys.modules.get("torch")
    module_class = getattr(getattr(torch, "nn", None), "Module", None)
    if isinstance(module_class, type) and isinstance(model, module_class):
        return "torch"
    mindspore = sys.modules.get("mindspore")
    cell_class = getattr(getattr(mindspore, "nn", None), "Cell", None)
    if isinstance(cell_class, type) and isinstance(model, cell_class):
        return "mindspore"
    return None


def prune_model_weight(model, config, weight_file_path):
    """Fill ``model`` (a smaller model of the checkpoint's architecture) with the checkpoint's weights, in place.

    PyTorch ``model``: the checkpoint (``.pt .pth .bin .pkl`` - loaded with ``weights_only=True`` -,
    ``.safetensors``, a sharded index or a Hugging Face directory) is read lazily. MindSpore ``nn.Cell``: a
    ``.ckpt`` file, or a MindSpore ``.safetensors`` file. The checkpoint is transformed by the config's steps,
    checked to fill every parameter of ``model`` with the right shape, and only then loaded. Returns None;
    ``config.report`` says what was kept.

    Raises:
        ValueError: ``model`` is None or neither a PyTorch nor a MindSpore model; an unknown step;
            ``prune_vit_intra_block`` without qkv keys; for MindSpore, importance ``"activation"`` or
            ``layer_id_map="auto"`` without the big Cell (``set_importance(kind, dataset, model=big_cell)``);
            calibration batches without samples; a bad path (see
            :func:`~msmodelslim.utils.checks.check_input_path`); a checkpoint that cannot fill the model (the
            message lists the missing keys and shape conflicts), or that holds different values for tensors the
            model ties. The model is untouched on any error.
        TypeError: ``config`` is not a PruneConfig, ``weight_file_path`` not a path, or the big model of
            ``set_importance`` is of the other framework.
        CheckpointError / UnsafeCheckpointError: the file is corrupt, empty, unsupported (for MindSpore: not
            ``.ckpt`` / ``.safetensors``), or a pickle with code.
    """
    if model is None:
        raise ValueError("The model can't be None!")
    framework = model_framework(model)
    if framework is None:
        raise ValueError(f"The model must be a MindSpore or PyTorch model, not {type(model).__name__}.")
    if not isinstance(config, PruneConfig):
        raise TypeError(f"config must be PruneConfig, not {type(config).__name__}.")
    for step in config.prune_state_dict_steps:
        if step not in STEPS:
            raise ValueError(f"Step {step} not exist! Step must in {list(STEPS)}")
    _check_qkv_keys(config)
    _check_importance_model(config, framework)
    auto = any(params["layer_id_map"] == AUTO for params in config.prune_blocks_params)
    if auto and "prune_blocks" in config.prune_state_dict_steps and config.importance_dataset is None:
        raise ValueError("layer_id_map='auto' needs calibration data: call set_importance(kind, dataset=[batches]) "
                         "(and model=big_model unless the checkpoint is a Hugging Face directory).")
    path = check_input_path(weight_file_path)
    if framework == "mindspore":
        from msmodelslim.mindspore.prune.transformer_prune.weights import prune_model_weight_ms

        prune_model_weight_ms(model, config, path, given=os.fspath(weight_file_path))
        return
    from msmodelslim.pytorch.prune.transformer_prune.weights import prune_model_weight_torch

    prune_model_weight_torch(model, config, path)


def _check_importance_model(config, framework):
    """Raise ``TypeError`` when the big model given to ``set_importance`` is of another framework than ``model``."""
    big = config.importance_model
    if big is not None and model_framework(big) != framework:
        raise TypeError(f"The big model given to set_importance ({type(big).__name__}, {model_framework(big)}) and "
                        f"the model to fill ({framework}) must be of the same framework.")


def _check_qkv_keys(config):
    """Raise ``ValueError`` when ``prune_vit_intra_block`` is a step but no qkv keys are set."""
    if "prune_vit_intra_block" in config.prune_state_dict_steps and getattr(config, "qkv_keys", None) is None:
        raise ValueError("config_name not in PruneConfig: step 'prune_vit_intra_block' needs 'qkv_keys', the "
                         "substrings that name the fused q/k/v tensors of the checkpoint; set them with "
                         "config.set_qkv_keys(['qkv']) (or the qkv_keys attribute).")
