"""The calibration engine of the sparse tool: which layers, in which order, with which statistics.

Models made of repeated blocks (decoders, encoders) are processed block by block (``utils.sequential``): the
statistics of a block's layers are gathered from its inputs, the layers are sparsified, and the block's outputs
are recomputed with the sparse weights before feeding the next block, as SparseGPT and Wanda do. Other models, and
layers outside the blocks, are sparsified layer by layer in execution order, one pass over the calibration data
each. Either way every layer sees the already sparsified layers before it. Progressive mode repeats this per
stage. On any error every weight is restored.
"""
import fnmatch
import re
import time
from dataclasses import dataclass

import numpy
import torch
from torch import nn

from msmodelslim.errors import ModelslimError
from msmodelslim.pytorch.sparse.sparse_tools import allocation, stages
from msmodelslim.pytorch.sparse.sparse_tools.methods import GROUP_PRUNERS, NEEDS, PRUNERS, UPDATES_WEIGHTS, wanda
from msmodelslim.pytorch.sparse.sparse_tools.methods.reconstruct import damped_hessian, reconstruct
from msmodelslim.pytorch.sparse.sparse_tools.stats import LayerStats, SharedInputStats, Ungroupable
from msmodelslim.pytorch.utils.calibration import as_call_params, eval_mode, first_tensor, hooks, model_device
from msmodelslim.utils.logging import logger
from msmodelslim.pytorch.utils.sequential import StopAfterFirstBatchCalls, blocks_chain, find_blocks, iterate_blocks


def _is_conv1d(module):
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None and hasattr(module, "nf")


def target_layers(model, ignore=()):
    """``{name: module}`` of the layers to sparsify: every ``nn.Linear`` (and Hugging Face ``Conv1D``) whose name
    does not contain ``lm_head`` and matches no ``ignore`` pattern (glob, or ``re:<regex>``)."""
    def ignored(name):
        for pattern in ignore:
            if pattern.startswith("re:") and re.search(pattern[3:], name):
                return True
            if not pattern.startswith("re:") and fnmatch.fnmatchcase(name, pattern):
                return True
        return False

    return {name: module for name, module in model.named_modules()
            if (isinstance(module, nn.Linear) or _is_conv1d(module)) and "lm_head" not in name and not ignored(name)}


def weight_matrix(module):
    """A float32 copy of the weight as ``[out, in]`` (Conv1D stores it transposed)."""
    weight = module.weight.detach()
    return (weight.T if _is_conv1d(module) else weight).to(torch.float32, copy=True)


def in_features(module):
    """The width of the layer's weight rows (its input size)."""
    return module.weight.shape[0] if _is_conv1d(module) else module.weight.shape[1]


def set_weight_matrix(module, matrix):
    target = module.weight
    with torch.no_grad():
        target.copy_((matrix.T if _is_conv1d(module) else matrix).to(target.dtype))


TIMED = ("forward", "statistics", "solve", "io")  # where the time of a run goes (seconds); see run()


@dataclass
class LayerResult:
    """What sparsifying one layer did."""

    name: str
    shape: tuple
    stage: str
    target: float
    sparsity: float
    relative_error: float


class _Backup:
    """An undo log of the weight changes made so far; :meth:`restore` puts every original value back.

    A change is recorded against the tensor it writes to (``module.weight``), not the module, with the values it
    is about to overwrite, and :meth:`restore` undoes the changes newest first. Layers that share one Parameter
    (tied weights) therefore come back exactly: the second layer's record holds the values left by the first, and
    the first layer's record, undone last, the original ones. A full copy of a tensor is taken once; later changes
    to the same tensor need no record of their own.
    """

    def __init__(self):
        self._log = []
        self._copied = set()  # id() of the tensors with a full copy in the log (the log keeps them alive)

    def save(self, tensor, mask=None):
        """Record what changing ``tensor`` will overwrite: all of it (``mask`` None), or only the entries where
        ``mask`` (a bool tensor of the same shape) is True - one bit per weight plus the masked values."""
        if id(tensor) in self._copied:
            return
        values = tensor.detach()
        if mask is None:
            self._log.append((tensor, None, values.to("cpu", copy=True)))
            self._copied.add(id(tensor))
        else:
            packed = numpy.packbits(mask.cpu().numpy(), axis=None)
            self._log.append((tensor, packed, values[mask].to("cpu", copy=True)))

    def restore(self):
        """Undo every recorded change, newest first, and forget them."""
        with torch.no_grad():
            for tensor, packed, values in reversed(self._log):
                if packed is None:
                    tensor.copy_(values.to(tensor.device))
                else:
                    bits = numpy.unpackbits(packed, count=tensor.numel()).astype(bool)
                    mask = torch.from_numpy(bits).reshape(tensor.shape).to(tensor.device)
                    tensor[mask] = values.to(tensor.device, tensor.dtype)
        self._log.clear()
        self._copied.clear()


class _NoBackup:
    """No undo log (a streamed run changes copies of weights it loaded itself)."""

    def save(self, tensor, mask=None):
        pass

    def restore(self):
        pass


def check_dataset(dataset):
    """Validate the calibration data up front.

    Raises:
        TypeError: not a list, or a batch that is not a Tensor, list, tuple or dict (named by its index).
        ValueError: an empty list.
    """
    if not isinstance(dataset, list):
        raise TypeError(f"dataset must be list, not {type(dataset).__name__}.")
    if not dataset:
        raise ValueError("dataset is empty: give at least one calibration batch (e.g. [torch.randn(64, 100)]).")
    for index, batch in enumerate(dataset):
        as_call_params(batch, f"dataset[{index}]")


def run_dataset(model, dataset):
    """Feed every batch to the model (no grad); a failure names the batch."""
    device = model_device(model)
    with torch.no_grad():
        for index, batch in enumerate(dataset):
            try:
                as_call_params(batch, f"dataset[{index}]").to(device)(model)
            except ModelslimError:
                raise
            except Exception as exc:
                raise RuntimeError(f"dataset[{index}]: the model failed on this batch ({type(exc).__name__}: "
                                   f"{exc})") from exc


class Sparsifier:
    """Sparsify ``model`` in place from ``dataset`` according to ``config`` (a SparseConfig)."""

    def __init__(self, model, config, dataset, share_inputs=True, blocks=None, around_block=None, device=None):
        """``blocks``, ``around_block`` and ``device`` serve streaming (see ``streaming``): the blocks to use as
        they are (no check that they chain), a context manager factory enclosing each block's turn
        (:func:`iterate_blocks`), and the device of the calibration batches. A streamed run keeps no undo log:
        the weights it changes are not the user's."""
        self.model = model
        self.share_inputs = share_inputs
        self._around_block = around_block
        self._device = device
        self.config = config
        self.dataset = dataset
        self.layers = target_layers(model, config.ignore)
        self.results = []
        self._backup = _Backup() if around_block is None else _NoBackup()
        self._ratios = {}
        self._block_list = blocks
        self.timings = dict.fromkeys(TIMED, 0.0)
        self._call_order = []

    # ------------------------------------------------------------------------------------------- statistics
    def _collect(self, names, runner, needs):
        """Run ``runner`` with hooks on ``names``; ``{name: LayerStats}`` of their inputs. Layers that read the same
        tensor share one LayerStats (computed once); if that grouping does not hold on every call, the statistics
        are collected again, one per layer."""
        def make(name):
            module = self.layers[name]
            return LayerStats(name, weight_matrix(module).shape[1], module.weight.device,
                              hessian="hessian" in needs, moments="moments" in needs)

        if self.share_inputs:
            shared = SharedInputStats(make)
            try:
                self._run_hooked(names, runner, shared.add)
                return shared.result(names)
            except Ungroupable as exc:
                logger.debug("Collecting per layer (%s).", exc)
        stats = {name: make(name) for name in names}
        self._run_hooked(names, runner, lambda name, tensor: stats[name].add(tensor))
        return stats

    def _run_hooked(self, names, runner, record):
        """``runner(stopper)`` with ``record(name, input)`` hooked before each call of the layers; the time spent goes
        to the timings, the order in which the layers were first called to ``_call_order``. ``stopper`` (see
        :class:`StopAfterFirstBatchCalls`) ends a batch's forward once it has made the first batch's calls."""
        spent = [0.0]
        self._call_order = []
        stopper = StopAfterFirstBatchCalls(names)

        def hook(name, module, inputs, output):
            start = time.perf_counter()
            if name not in self._call_order:
                self._call_order.append(name)
            record(name, first_tensor(inputs))
            spent[0] += time.perf_counter() - start
            stopper.called(name)

        with hooks([(n, self.layers[n]) for n in names], hook, before=True):
            runner(stopper)
        self.timings["statistics"] += spent[0]

    def _blocks(self):
        """The model's blocks, if running them one after another reproduces the model (else [])."""
        if self._block_list is None:
            blocks = find_blocks(self.model)
            if blocks and not blocks_chain(self.model, blocks, self.dataset[0]):
                logger.info("%s runs code between its blocks: sparsifying from whole passes over the data.",
                            type(self.model).__name__)
                blocks = []
            self._block_list = blocks
        return self._block_list

    def _sweeps(self, names, needs, progress, visit, sequential=False):
        """Call ``visit(stats)`` on the statistics of ``names``, sequentially: block by block when the model has
        blocks (each block's outputs computed after ``visit``), then layer by layer, in execution order, for the
        other layers (one pass over the data each), so that every layer sees the already sparsified ones.
        ``sequential``: inside a block too, one group of layers sharing an input at a time, in execution order."""
        blocks = self._blocks()
        inside = {block_name: [n for n in names if n.startswith(block_name + ".")] for block_name, _ in blocks}
        in_blocks = {n for members in inside.values() for n in members}
        if in_blocks:
            for step in iterate_blocks(self.model, blocks, self.dataset, progress=progress, around=self._around_block,
                                       device=self._device):
                members = inside.get(step.name)

                def runner(stopper, _step=step):
                    _step.run(keep=False, stopper=stopper)

                if members and sequential:
                    self._visit_in_order(members, runner, needs, visit)
                elif members:
                    visit(self._collect(members, runner, needs))
        for name in self._execution_order([n for n in names if n not in in_blocks]):
            visit(self._collect([name], lambda _stopper: run_dataset(self.model, self.dataset), needs))

    def _visit_in_order(self, members, runner, needs, visit):
        """``visit`` each group of ``members`` that share an input, in execution order, the statistics of each
        group gathered after the groups before it were visited (the first group's from the first pass)."""
        stats = self._collect(members, runner, needs)
        first_calls = self._call_order + [name for name in members if name not in self._call_order]
        groups = {}
        for name in first_calls:
            groups.setdefault(id(stats[name]), []).append(name)
        for index, group in enumerate(groups.values()):
            group_stats = {name: stats[name] for name in group} if index == 0 else self._collect(group, runner, needs)
            visit(group_stats)

    def _execution_order(self, names):
        """``names`` sorted by when the layers first run on the first batch (never-called layers last)."""
        if len(names) < 2:
            return names
        order = []

        def record(name, module, inputs, output):
            if name not in order:
                order.append(name)

        with hooks([(n, self.layers[n]) for n in names], record), torch.no_grad():
            run_dataset(self.model, self.dataset[:1])
        return order + [n for n in names if n not in order]

    # ------------------------------------------------------------------------------------------- allocation
    def _allocate(self):
        names = list(self.layers)
        ratio = self.config.layer_ratio
        self._ratios = {name: ratio for name in names}
        if self.config.uniform:
            return
        groups, outliers, sizes = [], [], []
        blocks = self._blocks()

        def visit(stats):
            by_group = {}
            for name, layer_stats in stats.items():
                block = next((b for b, _ in blocks if name.startswith(b + ".")), name)
                by_group.setdefault(block, []).append((name, layer_stats))
            for block, members in by_group.items():
                metrics = [wanda.scores(weight_matrix(self.layers[n]), s) for n, s in members]
                groups.append([n for n, _ in members])
                outliers.append(allocation.outlier_fraction(metrics, self.config.owl_m))
                sizes.append(sum(m.numel() for m in metrics))

        with eval_mode(self.model):
            self._sweeps(names, {"sq"}, "OWL outlier ratios", visit)
        ratios = allocation.owl_ratios(outliers, sizes, self.config.sparse_ratio, self.config.owl_lambda)
        for members, group_ratio in zip(groups, ratios):
            for name in members:
                self._ratios[name] = group_ratio
        logger.info("OWL ratios per group (outlier fraction -> sparsity): %s",
                    ", ".join(f"{o:.4f}->{r:.3f}" for o, r in zip(outliers, ratios)))

    # ------------------------------------------------------------------------------------------- pruning
    def _prune(self, stats, stage):
        start = time.perf_counter()
        for members in self._solve_groups(stats):
            weights = [weight_matrix(self.layers[name]) for name in members]
            for name, weight, (new, mask) in zip(members, weights, self._solve(members, weights, stats)):
                self._apply(self.layers[name], new, mask,
                            self.config.algorithm in UPDATES_WEIGHTS or self.config.reconstructs)
                self.results.append(LayerResult(name, tuple(weight.shape), stage, self._ratios[name],
                                                float(mask.float().mean()),
                                                _relative_error(weight, new, stats[name])))
        self.timings["solve"] += time.perf_counter() - start

    def _solve_groups(self, stats):
        """The layers in order, as lists of those solved together: layers that share their input statistics and
        whose method solves several layers at once (SparseGPT), unless two of them share a weight tensor."""
        groups = {}
        for name, layer_stats in stats.items():
            groups.setdefault(id(layer_stats), []).append(name)
        for members in groups.values():
            weights = {id(self.layers[name].weight) for name in members}
            if self.config.algorithm in GROUP_PRUNERS and len(members) > 1 and len(weights) == len(members):
                yield members
            else:
                yield from ([name] for name in members)

    def _solve(self, members, weights, stats):
        """``[(new weight, mask)]`` of the layers ``members``."""
        algorithm = self.config.algorithm
        options = {"blocksize": self.config.blocksize, "percdamp": self.config.percdamp, "variant": algorithm,
                   "max_swaps": self.config.max_swaps, "swap_threshold": self.config.swap_threshold}
        ratios = [self._ratios[name] for name in members]
        try:
            if len(members) > 1:
                results = GROUP_PRUNERS[algorithm](weights, stats[members[0]], ratios, self.config.n_m, options)
            else:
                results = [PRUNERS[algorithm](weights[0], stats[members[0]], ratios[0], self.config.n_m, options)]
        except ValueError as exc:
            raise ValueError(f"Layer '{', '.join(members)}': {exc}") from exc
        if not self.config.reconstructs:
            return results
        hessian, live = damped_hessian(stats[members[0]], self.config.percdamp)
        return [(reconstruct(weight, new, mask, hessian, live), mask) for weight, (new, mask) in zip(weights, results)]

    def _apply(self, module, new, mask, updates_weights):
        """Write the result into the layer, after recording what it overwrites."""
        if updates_weights:
            self._backup.save(module.weight)
            set_weight_matrix(module, new)
            return
        # The other methods only zero weights: zero them in place, so that the kept weights keep every bit
        # (a float64 weight would otherwise pass through the float32 working copy).
        stored_mask = mask.T if _is_conv1d(module) else mask
        stored_mask = stored_mask.to(module.weight.device)
        self._backup.save(module.weight, stored_mask)
        with torch.no_grad():
            module.weight.masked_fill_(stored_mask, 0)

    def _check_pattern_width(self):
        """Refuse an N:M pattern that fits no selected layer; warn about the layers it does not fit.

        A row narrower than M holds no complete group of M weights. Such a layer gets ``floor(N * width / M)``
        zeros per row (none when that is 0: it stays dense), as :func:`masks.lowest_n_of_m` does for a short last
        group, and a WARNING names it.

        Raises:
            ValueError: every selected layer is narrower than M (nothing could be N:M sparse); the message names
                the pattern and the widest row.
        """
        if self.config.n_m is None:
            return
        m = self.config.n_m[1]
        widths = {name: in_features(module) for name, module in self.layers.items()}
        narrow = [name for name, width in widths.items() if width < m]
        if len(narrow) == len(widths):
            widest = max(widths, key=widths.get)
            raise ValueError(f"pattern {self.config.pattern!r} needs rows of at least {m} weights, but the widest "
                             f"row of the selected layers has {widths[widest]} ('{widest}'), so no layer could be "
                             f"made {self.config.pattern} sparse. Choose M <= {widths[widest]}.")
        if narrow:
            shown = ", ".join(narrow[:10]) + (" ..." if len(narrow) > 10 else "")
            logger.warning("pattern %r: %d layer(s) have rows narrower than %d, so they hold no complete group; "
                           "they get floor(N * width / M) zeros per row and stay dense where that is 0: %s",
                           self.config.pattern, len(narrow), m, shown)

    def run(self):
        """Sparsify every target layer; returns the per-layer results.

        On any error (KeyboardInterrupt included) every weight is restored exactly, shared ones included.

        Raises:
            ValueError: an N:M pattern wider than every selected layer (before anything changes), NaN/inf
                activations, a failing layer; and the errors of :func:`check_dataset` and :func:`run_dataset`.
        """
        if not self.layers:
            logger.warning("%s has no Linear layer to sparsify; nothing changed.", type(self.model).__name__)
            return []
        self._check_pattern_width()
        check_dataset(self.dataset)
        plan = self._stages()
        needs = NEEDS[self.config.algorithm] | {"sq"} | ({"hessian"} if self.config.reconstructs else set())
        started = time.perf_counter()
        try:
            with eval_mode(self.model):
                self._allocate()
                for stage, names in plan:
                    if stage == stages.OTHER and self.config.progressive:
                        logger.info("Progressive mode: %d layer(s) fit no stage and are sparsified last: %s",
                                    len(names), ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
                    self._sweeps(names, needs, f"sparsify ({stage})" if stage else "sparsify",
                                 lambda stats, s=stage: self._prune(stats, s), self.config.true_sequential)
        except BaseException:
            self._backup.restore()
            self.results = []
            raise
        # the rest of the time: the forward passes (up to the first block, gathering statistics, computing each
        # block's outputs with its new weights) and the bookkeeping around them
        self.timings["forward"] = time.perf_counter() - started - sum(self.timings.values())
        return self.results

    def _stages(self):
        if not self.config.progressive:
            return [("", list(self.layers))]
        by_stage = {stage: [] for stage in stages.ORDER}
        for name in self.layers:
            by_stage[stages.stage_of(name)].append(name)
        return [(stage, names) for stage, names in by_stage.items() if names]


def _relative_error(weight, new, stats):
    """||W X - W' X|| / ||W X|| on the sampled calibration inputs (0 when there are none)."""
    sample = stats.sample.to(weight.device)
    if sample.numel() == 0:
        return 0.0
    reference = sample @ weight.T
    norm = reference.norm()
    return float((sample @ (weight - new).T).norm() / norm) if norm > 0 else 0.0
