"""The latency budget (``budget_kind="latency"``): the time of one forward pass over a few held-out rows on the
teacher's device.

The search needs a size for many architectures; building and timing each would be slow, so ``microseconds`` times
the few models the search asks for (the teacher, and for each hidden size and head count one- and two-layer models
with two FFN widths: a forward pass takes close to affine time in the depth and, at a fixed hidden size, in the FFN
width). Every candidate the search then scores is timed directly against the teacher (``ratio``). With several
processes, rank 0's measurements are used everywhere, so that every process searches the same candidates.
"""
from msmodelslim.pytorch.prune.budgets import latency_ratio, measure_latency
from msmodelslim.pytorch.slim import distributed


class Latency:
    """Times of one forward pass of ``inputs(batch, device)`` on the teacher's device."""

    def __init__(self, teacher, batch, inputs):
        self.teacher = teacher
        feed = inputs(batch, next(teacher.parameters()).device)
        self.call = lambda model: model(**feed)

    def microseconds(self, model):
        """The time of one forward pass of ``model`` (the fastest of several, as :meth:`ratio` compares), in whole
        microseconds (at least 1)."""
        measured = 1e6 * measure_latency(model, self.call, min_seconds=0.1, fastest=True)
        return max(1, round(distributed.from_rank0(measured)))

    def ratio(self, model):
        """The time of one forward pass of ``model`` over the teacher's, the two run alternately."""
        return distributed.from_rank0(latency_ratio(model, self.teacher, self.call))
