"""Peak resident memory of a process above where it started, sampled (``ru_maxrss`` keeps the peak of the imports,
which can hide everything measured after them). Linux only (``/proc/self/statm``)."""
import os
import threading
import time


def resident_bytes():
    """The resident size of this process now."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakResident:
    """Sample the resident size every ``interval`` seconds from now on; :meth:`above_start` is the peak seen minus
    the size at creation."""

    def __init__(self, interval=0.005):
        self.start = self.peak = resident_bytes()
        self._interval = interval
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            self.peak = max(self.peak, resident_bytes())
            time.sleep(self._interval)

    def above_start(self):
        time.sleep(10 * self._interval)  # a last sample after the work
        return self.peak - self.start
