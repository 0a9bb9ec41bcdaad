"""The ``--out`` directory of every subcommand: checked before any work, written all at once, never losing data.

Rules (README, "Safety"):

* ``--out`` is checked before the job starts: its parent must exist and be writable; it must not be a file, a
  symbolic link, ``/``, the home directory, the current directory or one of its ancestors, an input of the job, or
  inside or above an input.
* An existing non-empty ``--out`` is refused, unless ``--overwrite`` is given *and* the directory holds the
  :data:`MARKER` file that msmodelslim leaves in every result.
* The result is written to a hidden staging directory beside ``--out`` and swapped in at the end: the old result is
  moved aside, the new one moved in, then the old one deleted. If a step fails, the old result is put back and the
  staging directory removed. SIGINT and SIGTERM are held back during the swap.
* A lock file beside ``--out`` makes a second run on the same ``--out`` fail at once, naming the first.
* Files and directories get the user's umask.
"""
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time

from msmodelslim.cli.common import UsageError

MARKER = ".msmodelslim-output"
_SWAP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class OutputError(UsageError):
    """The result could not be written (disk full, permissions ...); ``--out`` was left as it was."""


def _is_within(path, ancestor):
    """True when ``path`` is ``ancestor`` or lies below it (both real, absolute paths)."""
    return path == ancestor or path.startswith(ancestor.rstrip(os.sep) + os.sep)


def _refuse(out, reason):
    raise UsageError(f"--out '{out}' {reason}")


def check_output(out, inputs=(), overwrite=False):
    """Check ``--out`` before any work; return its absolute real path.

    ``inputs`` are the paths the job reads (model directory, weights, checkpoint, config, calibration file).

    Raises:
        UsageError: any rule of the module docstring is broken; the message names ``--out``, the path and why.
    """
    if not isinstance(out, str) or not out.strip() or "\0" in out:
        raise UsageError(f"--out must be a directory path, got {out!r}")
    if os.path.islink(out):
        _refuse(out, "is a symbolic link; give the directory it points to, or another path")
    target = os.path.realpath(out)
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        _refuse(out, f"cannot be created: its parent '{parent}' is not an existing directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        _refuse(out, f"cannot be created: its parent '{parent}' is not writable")
    if target == os.path.realpath(os.sep) or target == os.path.realpath(os.path.expanduser("~")):
        _refuse(out, "is the root or the home directory")
    if _is_within(os.path.realpath(os.getcwd()), target):
        _refuse(out, "is the current directory or one of its ancestors")
    for source in inputs:
        if source is None:
            continue
        source_real = os.path.realpath(source)
        if _is_within(source_real, target) or _is_within(target, source_real):
            _refuse(out, f"is, contains or lies inside the input '{source}'")
    if os.path.lexists(target) and not os.path.isdir(target):
        _refuse(out, "exists and is not a directory")
    if os.path.isdir(target) and os.listdir(target):
        if not overwrite:
            _refuse(out, "exists and is not empty; choose another directory or pass --overwrite")
        if not os.path.isfile(os.path.join(target, MARKER)):
            _refuse(out, f"exists and was not written by msmodelslim (no {MARKER} file in it); --overwrite only "
                         f"replaces msmodelslim results, choose another directory")
    return target


def _apply_umask(root):
    """Give ``root`` and everything in it the modes a plain ``mkdir``/``open`` would have given them."""
    from msmodelslim.utils.checkpoint import current_umask

    mask = current_umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            executable = os.stat(path).st_mode & 0o100
            os.chmod(path, (0o777 if executable else 0o666) & ~mask)


@contextlib.contextmanager
def _signals_held():
    """Delay SIGINT/SIGTERM while the result is swapped in, so an interruption cannot split the swap."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SWAP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _swap_in(staging, target):
    """Replace ``target`` (absent, empty, or an earlier result) by ``staging``; on failure ``target`` is unchanged."""
    if not os.path.isdir(target):
        os.rename(staging, target)
        return
    aside = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old.", dir=os.path.dirname(target))
    old = os.path.join(aside, "result")
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        try:
            os.rename(old, target)
            os.rmdir(aside)
        except OSError:
            raise OutputError(f"the new result could not be moved to '{target}' and the previous one could not be "
                              f"moved back; it is kept at '{old}'") from None
        raise
    shutil.rmtree(aside, ignore_errors=True)


class _Lock:
    """An exclusive lock on ``--out`` for the whole job: a file beside it, held with ``flock`` where available."""

    def __init__(self, target):
        self.path = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.msmodelslim.lock")
        self.handle = None

    def acquire(self, out):
        try:
            import fcntl
        except ImportError:  # no flock (Windows): runs are not serialised there
            return self
        try:
            handle = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--out '{out}' cannot be created: {exc.strerror or exc} ({self.path})") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UsageError(f"--out '{out}' is being written by another msmodelslim run ({holder}); wait for it "
                             f"or choose another directory") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{' '.join(sys.argv[:1] + sys.argv[1:])[:300]}")
        handle.flush()
        self.handle = handle
        return self

    def release(self):
        if self.handle is not None:
            with contextlib.suppress(OSError):
                os.remove(self.path)
            self.handle.close()
            self.handle = None


class OutputDirectory:
    """The checked, locked ``--out`` of one job.

    Use as ``with OutputDirectory(args.out, inputs, args.overwrite) as output:`` around the whole job (the check and
    the lock happen on entry, before any work), then ``with output.writing() as staging:`` around the code that
    writes the files.
    """

    def __init__(self, out, inputs=(), overwrite=False, command="msmodelslim"):
        self.out = out
        self.inputs = tuple(inputs)
        self.overwrite = overwrite
        self.command = command
        self.target = None
        self._lock = None

    def __enter__(self):
        self.target = check_output(self.out, self.inputs, self.overwrite)
        self._lock = _Lock(self.target).acquire(self.out)
        try:  # checked again under the lock: another run may have written it in between
            check_output(self.out, self.inputs, self.overwrite)
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc):
        self._lock.release()
        return False

    @contextlib.contextmanager
    def writing(self):
        """Yield an empty staging directory; on normal exit it becomes ``--out``, on any exception it disappears.

        Raises:
            OutputError: writing or swapping in the result failed with an OSError (disk full ...); ``--out`` is as
                it was before.
        """
        parent = os.path.dirname(self.target)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(self.target)}.", dir=parent)
        try:
            try:
                yield staging
                self._write_marker(staging)
                _apply_umask(staging)
                with _signals_held():
                    _swap_in(staging, self.target)
            except OSError as exc:
                raise OutputError(f"the result could not be written to --out '{self.out}' ({exc.strerror or exc}); "
                                  f"--out was left as it was") from exc
        finally:
            if os.path.exists(staging):
                shutil.rmtree(staging, ignore_errors=True)

    def _write_marker(self, staging):
        from msmodelslim import __version__

        record = {"written_by": "msmodelslim", "version": __version__, "command": self.command,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with open(os.path.join(staging, MARKER), "w", encoding="utf-8") as handle:
            json.dump(record, handle)
