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
import stat
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


def check_output(out, inputs=(), overwrite=False, work_subdir=None):
    """Check ``--out`` before any work; return its absolute real path.

    ``inputs`` are the paths the job reads (model directory, weights, checkpoint, config, calibration file).
    ``work_subdir``: the name of a subdirectory a resumable job keeps its checkpoints in while it runs; an
    ``--out`` holding only that subdirectory is accepted (the job decides whether to resume from it).

    Raises:
        UsageError: any rule of the module docstring is broken; the message names ``--out``, the path and why.
    """
    if not isinstance(out, str) or not out.strip() or "\0" in out:
        raise UsageError(f"--out must be a directory path, got {out!r}")
    if os.path.islink(out.rstrip("/" + os.sep) or out):
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
        if work_subdir and os.listdir(target) == [work_subdir] and os.path.isdir(os.path.join(target, work_subdir)):
            return target
        if not overwrite:
            _refuse(out, "exists and is not empty; choose another directory or pass --overwrite")
        foreign = _not_written_by_us(target)
        if foreign:
            _refuse(out, f"exists and {foreign}; --overwrite only replaces a result exactly as msmodelslim wrote "
                         f"it, choose another directory")
    return target


def _files(root, detail=lambda info: info.st_size):
    """``{relative path: detail(lstat)}`` of every file below ``root`` (links are not followed)."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = detail(os.lstat(path))
    return found


def _not_written_by_us(target):
    """Why ``target`` is not an untouched msmodelslim result, or ``None`` when it is one."""
    try:
        with open(os.path.join(target, MARKER), encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return f"was not written by msmodelslim (no valid {MARKER} file in it)"
    listed = record.get("files") if isinstance(record, dict) else None
    if record.get("written_by") != "msmodelslim" or not isinstance(listed, dict):
        return f"was not written by msmodelslim ({MARKER} is not a msmodelslim record)"
    present = _files(target)
    present.pop(MARKER, None)
    for name in sorted(set(present) | set(listed)):
        if present.get(name) != listed.get(name):
            return f"holds files msmodelslim did not write or that were changed since (e.g. '{name}')"
    return None


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


class _DeferredSignals:
    """Hold SIGINT/SIGTERM back while the result is swapped in (Python runs signal handlers in the main thread only,
    so a recording handler is enough, whatever thread the OS delivers the signal to); :meth:`reraise` then
    delivers a held signal as its exception."""

    def __init__(self):
        self.received = []
        self.previous = {}

    def __enter__(self):
        for number in _SWAP_SIGNALS:
            try:
                self.previous[number] = signal.signal(number, lambda signum, frame: self.received.append(signum))
            except ValueError:  # not the main thread: nothing to hold back
                pass
        return self

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False

    def reraise(self, written):
        """Deliver the first held signal through the handler that was in place before."""
        if not self.received:
            return
        handler = self.previous.get(self.received[0])
        if callable(handler):
            try:
                handler(self.received[0], None)
            except KeyboardInterrupt as exc:
                exc.result_written = written
                raise
        elif self.received[0] == signal.SIGINT:
            error = KeyboardInterrupt()
            error.result_written = written
            raise error


def _swap_in(staging, target):
    """Replace ``target`` (absent, empty, or an earlier result) by ``staging``; on failure ``target`` is unchanged."""
    if not os.path.isdir(target):
        os.rename(staging, target)
        return
    aside = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old.", dir=os.path.dirname(target))
    old = os.path.join(aside, "result")
    try:
        os.rename(target, old)
    except BaseException:
        os.rmdir(aside)
        raise
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
        """Take the lock, or raise UsageError naming the run that holds it.

        The lock file is opened without following links, and an existing one is reused only if it is a plain file
        with one link that holds a msmodelslim lock record (or nothing): a user's file is never written to.
        """
        try:
            import fcntl
        except ImportError:  # no flock (Windows): runs are not serialised there
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise UsageError(f"--out '{out}' cannot be locked: {exc.strerror or exc} ({self.path})") from None
        handle = os.fdopen(fd, "r+", encoding="utf-8", errors="replace")
        try:
            info = os.fstat(fd)
            holder = handle.read(400).strip()
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or (holder and not holder.startswith("pid ")):
                raise UsageError(f"--out '{out}': '{self.path}' exists and is not a msmodelslim lock; remove it or "
                                 f"choose another directory")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise UsageError(f"--out '{out}' is being written by another msmodelslim run ({holder or 'starting'}); "
                                 f"wait for it or choose another directory") from None
        except BaseException:
            handle.close()
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{' '.join(sys.argv)[:300]}")
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

    def __init__(self, out, inputs=(), overwrite=False, command="msmodelslim", work_subdir=None):
        self.out = out
        self.work_subdir = work_subdir
        self.inputs = tuple(inputs)
        self.overwrite = overwrite
        self.command = command
        self.target = None
        self._lock = None
        self._found = None  # what --out held when the job started

    def __enter__(self):
        self.target = check_output(self.out, self.inputs, self.overwrite, self.work_subdir)
        self._lock = _Lock(self.target).acquire(self.out)
        try:  # checked again under the lock: another run may have written it in between
            check_output(self.out, self.inputs, self.overwrite, self.work_subdir)
            self._found = self._contents()
        except BaseException:
            self._lock.release()
            raise
        return self

    @property
    def work_dir(self):
        """The checkpoint subdirectory inside ``--out`` (it goes when the result is swapped in), or None."""
        return os.path.join(self.target, self.work_subdir) if self.work_subdir else None

    def _contents(self):
        if not os.path.lexists(self.target):
            return None
        found = _files(self.target, lambda info: (info.st_size, info.st_mtime_ns, info.st_ino))
        if self.work_subdir:  # the job's own checkpoints change while it runs
            found = {k: v for k, v in found.items() if k.split(os.sep)[0] != self.work_subdir}
        return found or None

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
                with _DeferredSignals() as held:
                    if self._contents() != self._found:
                        raise OutputError(f"--out '{self.out}' changed while msmodelslim was running; it was left "
                                          f"as it is and the new result was not written")
                    _swap_in(staging, self.target)
            except OSError as exc:
                raise OutputError(f"the result could not be written to --out '{self.out}' ({exc.strerror or exc}); "
                                  f"--out was left as it was") from exc
        finally:
            if os.path.exists(staging):
                shutil.rmtree(staging, ignore_errors=True)
        held.reraise(written=self.target)

    def _write_marker(self, staging):
        """The marker lists every file of the result with its size: ``--overwrite`` replaces the directory only
        while it holds exactly these files."""
        from msmodelslim import __version__

        record = {"written_by": "msmodelslim", "version": __version__, "command": self.command,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": _files(staging)}
        with open(os.path.join(staging, MARKER), "w", encoding="utf-8") as handle:
            json.dump(record, handle)
