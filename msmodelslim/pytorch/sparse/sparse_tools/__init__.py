"""Sparse tool: one-shot unstructured and N:M sparsity of Linear layers from calibration data.

Usage (as documented by msModelSlim)::

    from msmodelslim.pytorch.sparse.sparse_tools import SparseConfig, Compressor
    sparse_config = SparseConfig(method="magnitude", sparse_ratio=0.5)
    prune_compressor = Compressor(model, sparse_config)
    prune_compressor.compress(dataset=[torch.randn(64, 100)])

``magnitude`` is Wanda (|W|·‖X‖), ``hessian`` SparseGPT followed by a least-squares reconstruction of the kept
weights (``reconstruct``), ``par``/``par_v2`` a Wanda mask refined by DSnoT-style prune-and-regrow. Every
calibration batch is used; decoders and encoders are processed block by block.
"""
from torch import nn

from msmodelslim.pytorch.sparse.sparse_tools.config import SparseConfig
from msmodelslim.pytorch.sparse.sparse_tools.engine import Sparsifier
from msmodelslim.pytorch.sparse.sparse_tools.export import load_sparse, save_sparse
from msmodelslim.pytorch.sparse.sparse_tools.semi_structured import SemiStructuredReport, to_semi_structured
from msmodelslim.utils.logging import logger
from msmodelslim.utils.report import format_table

__all__ = ["SparseConfig", "Compressor", "SparsityReport", "load_sparse", "sparsify_checkpoint", "to_semi_structured",
           "SemiStructuredReport"]


class SparsityReport:
    """Per-layer results of a compression: ``layers`` (list of LayerResult), the overall sparsity, and
    ``timings``: seconds spent in the forward passes, gathering statistics, solving (masks and weight updates)
    and, when streaming a checkpoint, reading and writing weights."""

    def __init__(self, results, config, timings=None):
        self.layers = list(results)
        self.config = config
        self.timings = dict(timings or {})
        weights = sum(r.shape[0] * r.shape[1] for r in self.layers)
        zeros = sum(r.sparsity * r.shape[0] * r.shape[1] for r in self.layers)
        self.overall_sparsity = zeros / weights if weights else 0.0

    def table(self):
        """The per-layer table as text."""
        rows = [[r.name, f"{r.shape[0]}x{r.shape[1]}", r.stage or "-", f"{r.target:.3f}", f"{r.sparsity:.4f}",
                 f"{r.relative_error:.4f}"] for r in self.layers]
        return format_table(["layer", "shape", "stage", "target", "sparsity", "relative error"], rows)

    def __str__(self):
        text = (f"{self.config!r}\n{self.table()}\noverall sparsity of the sparsified layers: "
                f"{self.overall_sparsity:.4f}")
        if self.timings:
            text += "\ntime: " + ", ".join(f"{part} {seconds:.1f} s" for part, seconds in self.timings.items())
        return text


class Compressor:
    """Sparsify the Linear layers of ``model`` (in place) as ``cfg`` says.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module`` or ``cfg`` not a ``SparseConfig``.
    """

    def __init__(self, model, cfg):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be Module, not {type(model).__name__}.")
        if not isinstance(cfg, SparseConfig):
            raise TypeError(f"cfg must be SparseConfig, not {type(cfg).__name__}.")
        self.model = model
        self.cfg = cfg
        self.logger = logger
        self.model_wrapper = None
        self.is_compressed = False
        self._results = []
        self._timings = {}

    @property
    def compressed_model(self):
        """The model after :meth:`compress`, else None."""
        return self.model if self.is_compressed else None

    def compress(self, dataset):
        """Sparsify the model in place from ``dataset``, a list of calibration batches (a Tensor is fed as
        ``model(x)``, a list/tuple as ``model(*x)``, a dict as ``model(**x)``). Returns None.

        Every ``nn.Linear`` (and Hugging Face ``Conv1D``) whose name does not contain ``lm_head`` is sparsified,
        except names matching ``cfg.ignore``. On any error, KeyboardInterrupt included, every weight is restored
        exactly, also weights that several layers share (tied parameters): each change is undone against the
        tensor it wrote to, newest first.

        With an N:M pattern, a layer whose rows are narrower than M holds no complete group: it gets
        ``floor(N * width / M)`` zeros per row (it stays dense when that is 0) and a WARNING names it. When every
        selected layer is narrower than M, nothing is changed and ValueError is raised.

        Raises:
            TypeError: ``dataset`` is not a list, or a batch of an unsupported type (named by its index).
            ValueError: an empty dataset, an N:M pattern wider than every selected layer (the pattern and the
                widest row are named), NaN/inf activations (the layer is named), or a failing layer.
            RuntimeError: the model fails on a batch (named by its index).
        """
        logger.info("Start sparsifying %s with %r.", type(self.model).__name__, self.cfg)
        sparsifier = Sparsifier(self.model, self.cfg, dataset)
        self._results = sparsifier.run()
        self._timings = sparsifier.timings
        self.is_compressed = True
        report = self.report()
        logger.info("Finished: %d layers, overall sparsity %.4f.", len(report.layers), report.overall_sparsity)

    def report(self):
        """A :class:`SparsityReport`: per-layer sparsity, target and relative reconstruction error
        ||WX - W'X|| / ||WX|| on up to 128 sampled calibration tokens, the overall sparsity and where the time
        went."""
        return SparsityReport(self._results, self.cfg, self._timings)

    def export(self, path):
        """Save the model's weights to ``path`` in the compact sparse format (see README); load them back with
        ``load_sparse(path)``, bit for bit. The file is written under a temporary name beside ``path`` and renamed
        over it once complete, so an error leaves any previous file as it was.

        Raises:
            CheckpointError (a ValueError): ``path`` does not end in ``.safetensors`` (the format is a
                safetensors file; checked before anything is written), or its directory does not exist.
            SchemaValidateError (a TypeError): ``path`` is not a str or PathLike.
        """
        names = [f"{r.name}.weight" for r in self._results]
        save_sparse(self.model.state_dict(), path, names=names,
                    metadata={"sparsity_structure": self.cfg.pattern, "method": self.cfg.algorithm})


def sparsify_checkpoint(model_dir, config, out_dir, dataset, device=None):
    """Sparsify a Hugging Face checkpoint directory one block at a time; see
    :func:`msmodelslim.pytorch.sparse.sparse_tools.streaming.sparsify_checkpoint`."""
    from msmodelslim.pytorch.sparse.sparse_tools.streaming import sparsify_checkpoint as stream

    return stream(model_dir, config, out_dir, dataset, device)
