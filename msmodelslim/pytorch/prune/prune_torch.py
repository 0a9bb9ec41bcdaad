"""``PruneTorch``: importance-based structured pruning of any PyTorch model, with a replayable ``desc``.

Usage (as documented by msModelSlim)::

    from msmodelslim.pytorch.prune.prune_torch import PruneTorch
    desc = PruneTorch(model, torch.ones([1, 3, 224, 224])).prune(0.8)      # keep ~80 % of the parameters
    PruneTorch(fresh_model, torch.ones([1, 3, 224, 224])).prune_by_desc(desc)

Whole channels, neurons and attention heads are removed, so the model becomes physically smaller. Generic models
are grouped by the torch-pruning dependency graph; Hugging Face transformer families (BERT, RoBERTa, ViT, GPT-2,
Llama, Mistral, Qwen2, OPT) by explicit structure rules. See the README for the ``desc`` format.
"""
import contextlib
import copy
import math
import numbers
from dataclasses import dataclass, replace

import torch
from torch import nn

from msmodelslim.errors import ModelslimError, SampleInputError
from msmodelslim.pytorch.prune import desc as desc_format
from msmodelslim.pytorch.prune.budgets import MacCounter, check_budget, latency_ratio, search_latency
from msmodelslim.pytorch.prune.config_check import config_mismatch
from msmodelslim.pytorch.prune.graph import DEFAULT_TRACE_TIMEOUT_S, trace_groups
from msmodelslim.pytorch.prune.grouped_conv import couple_grouped_convs
from msmodelslim.pytorch.prune.groups import tie_groups
from msmodelslim.pytorch.prune.head_splits import check_head_splits, head_count_patches, record_reshapes
from msmodelslim.pytorch.prune.importance import BUILTIN, group_importance
from msmodelslim.pytorch.prune.layers import OUTPUT, ParameterSpec, spec_of
from msmodelslim.pytorch.prune.measure import count_params, profile
from msmodelslim.pytorch.prune.planner import plan_pruning
from msmodelslim.pytorch.prune.recovery import prune_with_recovery
from msmodelslim.pytorch.prune.soundness import protect_unsound
from msmodelslim.pytorch.prune.structure import (CompositeEngine, StructureEngine, detect_layers, detect_towers,
                                                 is_composite, log_config_notes, run_once, tower_groups,
                                                 traced_or_none)
from msmodelslim.pytorch.utils.calibration import CallParams, as_call_params, eval_mode
from msmodelslim.utils.logging import logger
from msmodelslim.utils.report import format_table

__all__ = ["PruneTorch", "CallParams"]

ENGINES = ("auto", "torch-pruning", "structure")


def _abnormal_ratio(ratio):
    return ratio < 0.4 or ratio >= 1


class PruneTorch:
    """Structured pruning of ``network`` traced with the sample ``inputs``.

    Args:
        network: the ``torch.nn.Module`` to prune (in place).
        inputs: a sample input: a Tensor (``network(x)``), a list or tuple (``network(*x)``) or
            ``CallParams(*args, **kwargs)``.
        align: channel counts stay multiples of this. Default None: 16, as the original, except that a layer
            narrower than 128 channels uses the largest power of two that is at most an eighth of its channels.
        engine: ``"auto"`` (structure rules for recognised transformer families, torch-pruning otherwise),
            ``"torch-pruning"`` or ``"structure"``.
        trace_timeout: seconds the torch-pruning graph build may take before a clear error.
        prune_hidden: for transformer families, whether the hidden size (residual stream) may be pruned.
        uniform_layers: for transformer families, every layer keeps the same number of heads and of FFN neurons
            (each layer choosing which), so the Hugging Face config still describes the pruned model.

    Raises:
        ValueError: ``network`` is not a ``torch.nn.Module``, a bad ``align``/``engine``, or a NaN
            ``trace_timeout``.
        SampleInputError: (a ``RuntimeError`` and a ``ValueError``) the model fails on ``inputs``; the model's own
            error is chained.
        TypeError: ``inputs`` is None or of another type; ``trace_timeout`` is not a number.
    """

    def __init__(self, network, inputs=None, align=None, engine="auto", trace_timeout=DEFAULT_TRACE_TIMEOUT_S,
                 prune_hidden=True, uniform_layers=True):
        if not isinstance(network, nn.Module):
            raise ValueError("network must be torch.nn.Module or Dag")
        if not isinstance(inputs, (torch.Tensor, list, tuple, CallParams)):
            raise TypeError("inputs must be type Tensor, list, tuple, CallParams")
        if align is not None and (isinstance(align, bool) or not isinstance(align, int) or align < 1):
            raise ValueError(f"align must be a positive int or None, got {align!r}.")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}.")
        _check_timeout(trace_timeout)
        self._network = network
        self._call = as_call_params(inputs)
        self._align = align
        self._engine_choice = engine
        self._trace_timeout = trace_timeout
        self._prune_hidden = prune_hidden
        self._uniform_layers = uniform_layers
        self._importance = "l1"
        self._loss_fn = None
        self._node_reserved_ratio = 0.5
        self._groups = None
        self._scores_cache = None  # ((groups, criterion, loss_fn) ids, scores)
        self._engine = None
        self._default_protection, self._default_unprotected = False, set()
        self._last = None
        self._reshapes = None  # the model's reshapes on the sample inputs, recorded when a desc cuts heads
        try:
            self._order, _, self._macs, self._output_shapes = profile(network, self._call)
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:  # the model refuses the sample inputs
            raise SampleInputError(f"The model fails on the sample inputs ({type(exc).__name__}: {exc}).") from exc

    # ------------------------------------------------------------------------------------------ properties
    @property
    def network(self):
        """The model being pruned."""
        return self._network

    @property
    def dag(self):
        """The channel groups of the model (list of ``ChannelGroup``), built on first use."""
        return self._channel_groups()

    groups = dag

    # ------------------------------------------------------------------------------------------ setters
    def set_importance_evaluation_function(self, fn, loss_fn=None):
        """Choose how channels are ranked; returns ``self``.

        ``fn`` is a callable ``fn(weight_slice) -> float`` (the original's interface) or one of ``"l1"`` (default),
        ``"l2"``, ``"taylor"``, ``"bn_scale"``, ``"activation"``, ``"random"``. ``loss_fn(output) -> scalar`` lets
        ``"taylor"`` compute gradients on the sample inputs.

        Raises:
            ValueError: ``fn`` is neither callable nor a known name.
        """
        if isinstance(fn, str):
            if fn not in BUILTIN:
                raise ValueError(f"importance evaluation function must be callable or one of {list(BUILTIN)}, "
                                 f"got {fn!r}")
        elif not callable(fn):
            raise ValueError("importance evaluation function must callable")
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError("loss_fn must be callable")
        self._importance = fn
        self._loss_fn = loss_fn
        return self

    def set_node_reserved_ratio(self, node_reserved_ratio):
        """Set the largest fraction of one layer's channels that may be removed (default 0.5); returns ``self``.

        Raises:
            TypeError: not a float.
            ValueError: not in (0, 1).
        """
        if not isinstance(node_reserved_ratio, float):
            raise TypeError("node max prune ratio must be float")
        if not 0 < node_reserved_ratio < 1:
            raise ValueError("node max prune ratio must in (0, 1)")
        self._node_reserved_ratio = node_reserved_ratio
        return self

    def set_align(self, align):
        """Set the channel alignment (kept channel counts are multiples of it); returns ``self``."""
        if isinstance(align, bool) or not isinstance(align, int) or align < 1:
            raise ValueError(f"align must be a positive int, got {align!r}.")
        self._align = align
        return self

    # ------------------------------------------------------------------------------------------ planning
    def _channel_groups(self):
        if self._groups is not None:
            return self._groups
        family, layers, moe = (None, {}, {})
        if self._engine_choice in ("auto", "structure") and (hasattr(self._network, "config")
                                                             or is_composite(self._network)):
            family, layers, moe = detect_layers(self._network)
        if self._engine_choice == "structure" and family is None:
            raise ValueError(f"engine='structure' needs a recognised Hugging Face transformer family; "
                             f"{type(self._network).__name__} is not one.")
        if family is not None:
            trace = run_once(self._traced_groups)
            engines = [StructureEngine(self._network, tower_family, tower_layers, prune_hidden=self._prune_hidden,
                                       trace=trace, moe=tower_moe)
                       for tower_family, tower_layers, tower_moe in detect_towers(self._network, family, layers, moe)]
            generic = self._tower_groups(engines, trace)
            self._engine = engines[0] if len(engines) == 1 and not generic else CompositeEngine(engines, generic)
            groups = self._engine.groups
        else:
            groups = couple_grouped_convs(self._network, self._traced_groups())
            self._engine = None
        protect_unsound(self._network, groups)
        for group in groups:
            if group.protected:
                logger.info("Protected from pruning: %s - %s.", group.name, group.protected)
        self._groups = groups
        return groups

    def _tower_groups(self, engines, trace):
        """The dependency graph's groups of a composite model's towers that no family describes; none when the
        model is not composite or its graph cannot be built."""
        traced = traced_or_none(trace, "for the towers no family describes") if is_composite(self._network) else None
        if traced is None:
            return []
        return couple_grouped_convs(self._network, tower_groups(self._network, engines, traced))

    def _traced_groups(self):
        """The channel groups of the dependency graph (raises :class:`GraphTraceError`)."""
        with eval_mode(self._network):
            return trace_groups(self._network, self._call, timeout_s=self._trace_timeout)

    def _protected_names(self, un_prune_list):
        names = set()
        for item in un_prune_list:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise ValueError("Element of un_prune_list must be str or int.")
            if isinstance(item, int):
                if -len(self._order) <= item < len(self._order):
                    names.add(self._order[item])
                else:
                    logger.warning("un_prune_list index %d is out of range (%d prunable layers); ignored.",
                                   item, len(self._order))
            else:
                names.add(item)
        return names

    def _is_protected(self, group, protected, by_default=False):
        """Why ``group`` must stay: a layer of ``protected`` writes it, or its own reason; None when it may shrink.

        The default ``[0, -1]`` (``by_default``) keeps a small network's stem and head; its first layer does not
        freeze a group that the whole network shares (see :meth:`_shared_across_network`)."""
        for member in group.members:
            if member.target not in protected:
                continue
            spec = spec_of(self._network, member.target, member.axis)
            if member.role == OUTPUT or len(spec.roles()) == 1:
                if by_default and member.target == self._order[0] and self._shared_across_network(group):
                    if group.name in self._default_unprotected:
                        return group.protected
                    self._default_unprotected.add(group.name)
                    logger.info("%s is the first layer, but %s is shared across the network; the default "
                                "un_prune_list does not protect it (pass un_prune_list=[0, -1] to keep it).",
                                member.target, group.name)
                    return group.protected
                default = " (by default: the first and the last layer)" if by_default else ""
                return f"{member.target} is in un_prune_list{default}"
        return group.protected

    def _shared_across_network(self, group):
        """Whether ``group`` is a transformer's heads, neurons or residual stream: from the family rules (kept
        uniform across layers, so protecting one layer's share would freeze all), or a stream that several layers
        write, linear ones among them. A CNN's stem stays protected as in the original, even where its output is
        the first stage's residual stream."""
        if self._engine is not None:
            return True
        kinds = [spec_of(self._network, m.target).kind for m in group.members if m.role == OUTPUT and m.axis is None]
        writers = [k for k in kinds if k in ("linear", "conv1d", "conv")]
        return len(writers) >= 2 and any(k in ("linear", "conv1d") for k in writers)

    def analysis(self, reserved_ratio=0.75, un_prune_list=None, *, budget="params"):
        """Plan a pruning that keeps ``reserved_ratio`` of the parameters, without changing the model.

        ``un_prune_list`` lists layers whose output channels stay (int: index among the Conv/Linear layers in
        execution order, negative allowed; str: module name); default ``[0, -1]``, the first and last layers,
        except that the default does not protect a first layer whose channels a transformer shares across layers
        (its first query projection, a ViT's patch embedding); an explicit ``[0, -1]`` does.
        ``budget`` says what ``reserved_ratio`` is a fraction of: ``"params"`` (default, as the original),
        ``"macs"`` (multiply-accumulates of the conv/linear layers on the sample inputs) or ``"latency"`` (the
        measured time of one forward pass on the sample inputs; planned over a few trial runs, each undone).

        Returns:
            ``(left_params, desc)``: the parameter count after pruning and the plan.

        Raises:
            TypeError: ``reserved_ratio`` is not a float, or ``un_prune_list`` not a list.
            ValueError: an element of ``un_prune_list`` is neither int nor str; an unknown ``budget``.
        """
        protected = self._checked_arguments(reserved_ratio, un_prune_list, budget)
        self._scores_cache = None  # scores are reused within one call only: the weights may change between calls
        planned = self._plan_for_budget(reserved_ratio, protected, budget)
        _log_channels(planned.desc)
        log_config_notes(planned.config_notes)
        return planned.params_after, planned.desc

    def _checked_arguments(self, reserved_ratio, un_prune_list, budget):
        """The protected layer names, after validating the arguments of :meth:`analysis`."""
        if not isinstance(reserved_ratio, float):
            raise TypeError("prune ratio must be float")
        if math.isnan(reserved_ratio):
            raise ValueError("prune ratio must be a number (the fraction to keep, e.g. 0.5), got nan")
        self._default_protection = un_prune_list is None
        self._default_unprotected = set()  # groups the default would have frozen, logged once per call
        if un_prune_list is None:
            un_prune_list = [0, -1]
        if not isinstance(un_prune_list, list):
            raise TypeError("un_prune_list must be a list.")
        check_budget(budget)
        protected = self._protected_names(un_prune_list)
        if _abnormal_ratio(reserved_ratio):
            logger.warning("The prune ratio is abnormal. Please check.")
        unknown = sorted(n for n in protected if n not in dict(self._network.named_modules()))
        if unknown:
            logger.warning("un_prune_list names no module called %s; ignored.", ", ".join(unknown))
        return protected

    def _plan_for_budget(self, reserved_ratio, protected, budget, blamed=()):
        if budget != "latency":
            return self._plan(reserved_ratio, protected, budget, blamed)
        dense = copy.deepcopy(self._network)  # timed beside each trial, so that load changes cancel out
        planned, trials = search_latency(
            min(max(reserved_ratio, 0.0), 1.0), lambda ratio: self._plan(ratio, protected, "macs", blamed),
            lambda planned: self._trial_latency_ratio(planned, dense))
        for trial in trials:
            logger.info("Latency budget: MACs kept %.1f%% -> latency %.1f%% of the dense model.",
                        100 * trial.macs_ratio, 100 * trial.latency_ratio)
        return planned

    def _trial_latency_ratio(self, planned, dense):
        """Latency of the model pruned by ``planned`` (applied as a trial, then undone) over that of ``dense``;
        infinite when it fails to run."""
        ratios = []
        operations, meta = desc_format.parse_desc(self._network, planned.desc)
        try:
            desc_format.apply_operations(self._network, operations, meta, keep=False,
                                         check=lambda model: ratios.append(latency_ratio(model, dense, self._call)))
        except desc_format.PrunedModelError:
            return float("inf")
        return ratios[0]

    def _plan(self, reserved_ratio, protected, budget="params", blamed=()):
        """A :class:`_Planned` pruning keeping ``reserved_ratio`` of ``budget`` (params or MACs); the groups at
        indices ``blamed`` are protected as well as the layers named in ``protected``."""
        with _library_errors_explained(self._network):
            groups = self._channel_groups()
            scoped = [replace(g, protected="its pruning broke the model" if i in blamed
                              else self._is_protected(g, protected, self._default_protection))
                      for i, g in enumerate(groups)]
        scores = self._scores(groups)
        with _library_errors_explained(self._network):
            keys = (self._engine.tie_keys(scoped, self._uniform_layers) if self._engine is not None
                    else [None] * len(scoped))
            plan_groups, plan_scores, untie = tie_groups(scoped, scores, keys)
            counter = (lambda: MacCounter(self._network, plan_groups, self._macs)) if budget == "macs" else None
            plan = plan_pruning(self._network, plan_groups, plan_scores, min(max(reserved_ratio, 0.0), 1.0),
                                self._node_reserved_ratio, self._align, make_counter=counter,
                                what="MACs" if budget == "macs" else "parameters")
            for note in plan.notes:
                logger.info("Pruning stopped early: %s.", note)
            removed = untie(plan.removed)
            desc, notes = self._desc_of(groups, removed,
                                        params={"before": plan.params_before, "after": plan.params_after})
        return _Planned(groups=groups, removed=removed, desc=desc, params_after=plan.params_after, config_notes=notes)

    def _scores(self, groups):
        """The importance of the units of ``groups``, computed once per :meth:`analysis` / :meth:`prune` call (a
        latency search or a repaired plan plans several times on the same, unchanged model)."""
        key = (id(groups), id(self._importance), id(self._loss_fn))
        if self._scores_cache is not None and self._scores_cache[0] == key:
            return self._scores_cache[1]
        user_function = ((callable(self._importance) and not isinstance(self._importance, str))
                         or self._loss_fn is not None)
        with contextlib.nullcontext() if user_function else _library_errors_explained(self._network):
            # the errors of the user's own importance or loss function reach the user as they are
            scores = group_importance(self._network, groups, self._importance, call=self._call,
                                      loss_fn=self._loss_fn)
        self._scores_cache = (key, scores)
        return scores

    def _desc_of(self, groups, removed, params=None):
        """``(desc, notes)``: the desc of removing ``removed`` from ``groups``, and why the model config cannot
        describe the result when it cannot."""
        if self._engine is not None:
            patches, fields, notes = self._engine.patches(removed)
        else:
            patches, fields, notes = head_count_patches(self._network, groups, removed), {}, []
            if hasattr(getattr(self._network, "config", None), "to_dict") and any(removed.values()):
                notes.append("no family rules describe this model, so msmodelslim sets none of its config fields")
        desc = desc_format.build_desc(
            self._network, groups, removed, engine=self._engine.engine if self._engine else "torch-pruning",
            patches=patches, config=fields, params=params)
        return desc, notes

    def _runs_with(self, planned, removed):
        """Whether the model still runs, with outputs of unchanged shapes, with only ``removed`` of ``planned``
        applied (a trial, always undone), with the config fields of the desc or, when they break it, without."""
        for attempt in _with_and_without_config(self._desc_of(planned.groups, removed)[0]):
            try:
                operations, meta = desc_format.parse_desc(self._network, attempt)
                dense = self._dense_reshapes(meta)
                desc_format.apply_operations(
                    self._network, operations, meta, keep=False,
                    check=lambda model: self._check_output_shapes(self._profiled_pruned(model, meta, dense)[0]))
            except ValueError:  # a layer rule refuses it, or the model fails to run
                continue
            return True
        return False

    def _check_output_shapes(self, profiled):
        """Raise ``ValueError`` when the outputs in ``profiled`` (see :func:`profile`) changed shape: a plan of
        :meth:`prune` must keep them (a group that reaches an output, e.g. a headless encoder's hidden size, is
        then found and protected)."""
        shapes = profiled[3]
        if shapes != self._output_shapes:
            changed = next((f"output {i}: {a} -> {b}" for i, (a, b) in enumerate(zip(self._output_shapes, shapes))
                            if a != b), f"{len(self._output_shapes)} -> {len(shapes)} output tensors")
            raise ValueError(f"the pruned model's outputs change shape ({changed})")

    def prune(self, reserved_ratio=0.75, un_prune_list=None, *, budget="params"):
        """Plan like :meth:`analysis`, then apply the plan to the model in place; returns the ``desc``.

        When the pruned model fails to run on the sample inputs, or its outputs change shape (a group that reaches
        an output, such as a headless encoder's hidden size), the group responsible is found (a bisection over the
        plan's groups, a few trial runs), protected, and the plan made again with the others (logged at INFO).

        Raises:
            the errors of :meth:`analysis` and :meth:`prune_by_desc`; the model is unchanged on any error.
        """
        protected = self._checked_arguments(reserved_ratio, un_prune_list, budget)
        self._scores_cache = None  # scores are reused within one call only: the weights may change between calls
        planned = prune_with_recovery(lambda blamed: self._plan_for_budget(reserved_ratio, protected, budget, blamed),
                                      self._apply_planned, self._runs_with)
        counted = self._last["params"][1]
        if counted != planned.params_after:  # the plan's own arithmetic missed a shared tensor: say what is true
            logger.warning("The plan counted %d parameters after pruning; the pruned model has %d (%.1f%% kept).",
                           planned.params_after, counted, 100.0 * counted / max(self._last["params"][0], 1))
            planned.desc[desc_format.META_KEY]["parameters"]["after"] = counted
        return planned.desc

    def _apply_planned(self, planned):
        """Apply ``planned``; when its config fields make the pruned model fail (forward() reads a field whose new
        value takes another code path, such as an encoder-decoder's projection between two widths) but it runs
        without them, apply it without them. Returns the plan as applied."""
        _log_channels(planned.desc)
        planned = replace(planned, old_config=desc_format.config_values(
            self._network, (planned.desc.get(desc_format.META_KEY) or {}).get("config") or {}))
        first, *fallback = _with_and_without_config(planned.desc)
        try:
            self._apply_desc(first, keep_output_shapes=True)
        except desc_format.PrunedModelError as exc:
            if not fallback:
                raise
            self._apply_desc(fallback[0], keep_output_shapes=True)
            reason = exc.__cause__ or exc
            planned = replace(planned, desc=fallback[0], config_notes=[
                *planned.config_notes, f"the model fails to run with config fields "
                f"{', '.join(first[desc_format.META_KEY]['config'])} set ({type(reason).__name__}: {reason})"])
        planned = self._config_rebuilds(planned)
        log_config_notes(planned.config_notes)
        return planned

    def _config_rebuilds(self, planned):
        """``planned`` as applied, after checking that the config it set rebuilds the pruned shapes: when it does
        not, the fields go back to what they were (and out of the desc) unless forward() needs them, and a note
        names the first tensor a rebuilt model would not have."""
        fields = (planned.desc.get(desc_format.META_KEY) or {}).get("config") or {}
        pruned = any(key != desc_format.META_KEY for key in planned.desc)
        mismatch = config_mismatch(self._network) if pruned else None
        if mismatch is None:
            return planned
        note = f"a model rebuilt from it would differ: {mismatch}"
        if not fields:
            return planned if planned.config_notes else replace(planned, config_notes=[note])
        new = desc_format.config_values(self._network, fields)
        desc_format.set_config_values(self._network, planned.old_config)
        try:
            with torch.no_grad(), eval_mode(self._network):
                self._call(self._network)
        except Exception:  # noqa: BLE001 - forward() reads the new values (Phi-3's head counts): they stay
            desc_format.set_config_values(self._network, new)
            return replace(planned, config_notes=[*planned.config_notes, f"{note}; its fields are set all the "
                                                  "same, since forward() reads them"])
        meta = {**planned.desc[desc_format.META_KEY], "config": {}}
        return replace(planned, desc={**planned.desc, desc_format.META_KEY: meta},
                       config_notes=[*planned.config_notes, f"{note}; its fields are left as they were"])

    def prune_by_desc(self, desc):
        """Apply a ``desc`` (from :meth:`prune`/:meth:`analysis`, possibly after a JSON round trip) in place.

        The whole desc is validated first; the pruned model must run on the sample inputs; on any error the model
        is left exactly as it was (values, Parameter objects, shared tensors and config).

        Raises:
            TypeError: ``desc`` is not a dict.
            ValueError: invalid characters or nesting, a model without parameters, a desc that does not belong to
                the model (the message names the first mismatching module, or both names of a layer registered
                twice), config fields that contradict the pruned weights, or a pruned model that fails to run.
        """
        self._apply_desc(desc)
        if any(key != desc_format.META_KEY for key in desc):
            mismatch = config_mismatch(self._network)
            if mismatch is not None:
                log_config_notes([f"a model rebuilt from it would differ: {mismatch}"])

    def _dense_reshapes(self, meta):
        """The reshapes the model, not yet pruned by ``meta``'s desc, makes on the sample inputs (recorded once per
        state of the model), when the desc cuts heads (``meta["head_splits"]``); else None."""
        if not meta.get("head_splits"):
            return None
        if self._reshapes is None:
            with torch.no_grad(), eval_mode(self._network):
                self._reshapes = record_reshapes(lambda: self._call(self._network))[1]
        return self._reshapes

    def _profiled_pruned(self, model, meta, dense):
        """``(profile, reshapes)`` of the pruned ``model`` on the sample inputs; ``reshapes`` are recorded (see
        :func:`record_reshapes`) when the desc cuts heads, and checked against ``dense``'s.

        Raises:
            ValueError: a reshape that cut channels into heads (``meta["head_splits"]``) now cuts them into heads
                of another size (the heads would mix), or the model fails to run.
        """
        if dense is None:
            return profile(model, self._call), None
        profiled, reshapes = record_reshapes(lambda: profile(model, self._call))
        check_head_splits(dense, reshapes, [tuple(split) for split in meta["head_splits"]])
        return profiled, reshapes

    def _apply_desc(self, desc, keep_output_shapes=False):
        operations, meta = desc_format.parse_desc(self._network, desc)
        before_params = count_params(self._network)
        before_macs = sum(self._macs.values())
        before_shapes = _role_sizes(operations)
        profiled = []

        dense = self._dense_reshapes(meta)

        def runs(model):
            # the post-prune check is also the new profile, so a failure there restores the model too
            profiled.append(self._profiled_pruned(model, meta, dense))
            if keep_output_shapes:
                self._check_output_shapes(profiled[0][0])

        desc_format.apply_operations(self._network, operations, meta, check=runs)
        after_params = count_params(self._network)
        (self._order, _, macs_after, self._output_shapes), self._reshapes = profiled[0]
        self._last = {"params": (before_params, after_params), "macs": (before_macs, sum(macs_after.values())),
                      "layers": before_shapes, "layer_macs": (dict(self._macs), macs_after)}
        self._macs = macs_after
        self._groups = None  # the model changed: groups are rebuilt on the next analysis
        self._scores_cache = None
        logger.info("Parameters: %d -> %d (%.2f%% pruned).", before_params, after_params,
                    100.0 * (before_params - after_params) / max(before_params, 1))

    # ------------------------------------------------------------------------------------------ report
    def summary(self):
        """A table of the last pruning: channels per changed layer, parameters and MACs before and after.

        MACs count convolution and linear layers on the sample inputs. Returns an empty string before pruning.
        """
        if self._last is None:
            return ""
        rows = []
        macs_before, macs_after = self._last["layer_macs"]
        for target, sizes in self._last["layers"].items():
            try:
                spec = spec_of(self._network, target, sizes["axis"])
            except (LookupError, TypeError):
                continue
            now = {role: spec.size(role) for role in sizes["roles"]}
            cells = [f"{sizes['roles'][r]} -> {now[r]}" for r in ("output", "input") if r in now]
            rows.append([target, spec.kind, *([cells[0], cells[1]] if len(cells) == 2 else [cells[0], ""]),
                         macs_before.get(target, ""), macs_after.get(target, "")])
        (p0, p1), (m0, m1) = self._last["params"], self._last["macs"]
        rows.append(["(total)", "", "", "", m0, m1])
        table = format_table(["layer", "kind", "channels", "input channels", "MACs before", "MACs after"], rows)
        totals = (f"parameters: {p0:,} -> {p1:,} ({p1 / max(p0, 1):.1%}); "
                  f"MACs: {m0:,} -> {m1:,} ({m1 / max(m0, 1):.1%})")
        return table + "\n" + totals


def _log_channels(desc):
    """The original's INFO line per pruned layer."""
    for target, entry in desc.items():
        if target != desc_format.META_KEY and "output" in entry:
            logger.info("node name: %s chn: %d -> %d", target, len(entry["output"][1]), entry["output"][0])


def _with_and_without_config(desc):
    """``[desc]``, and the same desc without its config fields when it has some: the second is tried when the
    first makes the model fail."""
    meta = desc.get(desc_format.META_KEY) or {}
    if not meta.get("config"):
        return [desc]
    return [desc, {**desc, desc_format.META_KEY: {**meta, "config": {}}}]


@dataclass
class _Planned:
    """One plan: the model's groups, the units removed from each (``{group index: units}``), its desc."""

    groups: list
    removed: dict
    desc: dict
    params_after: int
    config_notes: list = ()  # why the model config cannot describe the pruned shapes
    old_config: dict = None  # the values the desc's config fields had before it was applied


@contextlib.contextmanager
def _library_errors_explained(model):
    """Let the documented errors through; turn any other exception raised while grouping, scoring or planning
    (an ``IndexError`` from an unforeseen layout ...) into a ``ValueError`` that says what to do. Nothing here
    changes the model."""
    try:
        yield
    except (ModelslimError, ValueError, TypeError):
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the documented type and the cause chained
        raise ValueError(f"PruneTorch cannot plan the pruning of {type(model).__name__} ({type(exc).__name__}: "
                         f"{exc}). The model was not changed; exclude the layer named above with un_prune_list, or "
                         "use engine='torch-pruning' / a smaller ratio.") from exc


def _role_sizes(operations):
    """``{target: {"axis", "roles": {role: channels}}}`` of the layers a parsed desc changes, before it applies."""
    sizes = {}
    for target, spec, _ in operations:
        axis = spec.axis if isinstance(spec, ParameterSpec) else None
        sizes[target] = {"axis": axis, "roles": {role: spec.size(role) for role in spec.roles()}}
    return sizes


def _check_timeout(trace_timeout):
    """Raise ``TypeError`` unless ``trace_timeout`` is a real number of seconds, ``ValueError`` for NaN."""
    if isinstance(trace_timeout, bool) or not isinstance(trace_timeout, numbers.Real):
        raise TypeError(f"trace_timeout must be a number of seconds (int or float), not "
                        f"{type(trace_timeout).__name__} {trace_timeout!r:.80}.")
    if math.isnan(trace_timeout):
        raise ValueError("trace_timeout must be a number of seconds, not NaN.")
