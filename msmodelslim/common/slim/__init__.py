"""``slim_model``: from a big transformer to a smaller *trained* one in one call.

Usage::

    from msmodelslim.common.slim import SlimConfig, slim_model
    result = slim_model("SmolLM2-135M/", SlimConfig(budget=0.5, budget_kind="non_embedding_params"), data="wiki")
    result.save("smollm2-slim")      # model/ (from_pretrained), report.md, loss.png, metrics.json

The framework-free parts (config, architecture search, report) live here; the work is done by the PyTorch
backend, :mod:`msmodelslim.pytorch.slim`, imported only when called.
"""
import os

from msmodelslim.common.slim.config import SlimConfig
from msmodelslim.common.slim.result import SlimResult

__all__ = ["SlimConfig", "SlimResult", "slim_model"]


def slim_model(model, config=None, data="wiki", tokenizer=None, checkpoint_dir=None, resume=False):
    """Search the architecture that meets ``config.budget``, fill it with the teacher's most important weights,
    distill it from the teacher, and return a :class:`SlimResult` (``result.model`` is the trained slim model).

    ``model``: a Hugging Face model directory, or a transformers model (then ``tokenizer`` is required).
    ``data``: ``"wiki"`` (the Wikipedia extracts of the assets), a list of texts, or for a sequence classifier a
    list of ``{"text": str, "label": int}`` records (the labels' cross-entropy joins the distillation with
    ``config.label_weight`` and the metric is held-out accuracy); every 10th text is held out for evaluation and
    never trained on. ``checkpoint_dir``: where resumable checkpoints are written (created
    when the first one is; the search result, then the distillation state every ``checkpoint_every`` steps and on
    SIGINT/SIGTERM); ``resume=True`` continues from them exactly. The teacher is never modified.

    Raises:
        TypeError: ``config`` is not a SlimConfig or has a field of the wrong type; ``data`` or ``model`` of the
            wrong type.
        ValueError: a field out of range; an architecture slim does not know (the message lists the supported
            ones); a budget no architecture meets (the message names the smallest reachable size); too little
            text; labels for a model that is not a sequence classifier, or outside its classes; ``checkpoint_dir``
            not creatable, holding another run's checkpoints (without ``resume``) or
            checkpoints of other settings or none (with ``resume``); a distillation loss that is not finite
            (stopped before the step that would spoil the weights).
    """
    config = SlimConfig() if config is None else config
    if not isinstance(config, SlimConfig):
        raise TypeError(f"config must be SlimConfig, not {type(config).__name__}.")
    config.validate()
    records = isinstance(data, (list, tuple)) and bool(data) and all(isinstance(t, dict) for t in data)
    if data != "wiki" and not records and (not isinstance(data, (list, tuple))
                                           or not all(isinstance(t, str) for t in data)):
        raise TypeError(f"data must be 'wiki', a list of str or a list of {{'text': str, 'label': int}} records, "
                        f"not {type(data).__name__}.")
    if checkpoint_dir is not None:
        checkpoint_dir = os.fspath(checkpoint_dir)
        if os.path.lexists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
            raise ValueError(f"checkpoint_dir '{checkpoint_dir}' exists and is not a directory.")
        existing = os.path.abspath(checkpoint_dir)
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"checkpoint_dir '{checkpoint_dir}' cannot be written: '{existing}' is not a writable "
                             f"directory.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir, the directory of the interrupted run's checkpoints.")
    from msmodelslim.pytorch.slim.pipeline import slim_model_torch

    return slim_model_torch(model, config, data, tokenizer, checkpoint_dir, resume)
