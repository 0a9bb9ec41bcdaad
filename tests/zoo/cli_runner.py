"""Running the ``msmodelslim`` command line in tests: in this process (fast) or in a child process (signals)."""
import contextlib
import dataclasses
import io
import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(os.path.dirname(sys.executable), "msmodelslim")
FAST = ["--samples", "2", "--seq-len", "32", "--eval-samples", "2"]

@dataclasses.dataclass
class Run:
    rc: int
    stdout: str
    stderr: str

    @property
    def error_lines(self):
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_cli(*args, cwd=None):
    """``msmodelslim ARGS`` in this process: returns the exit code and what it printed."""
    from msmodelslim.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in args])
            except SystemExit as exc:  # argparse
                rc = exc.code
    finally:
        os.chdir(previous)
    return Run(rc, out.getvalue(), err.getvalue())


def run_process(*args, cwd=None, timeout=300, code=None):
    """``msmodelslim ARGS`` in a child process, or ``python -c CODE ARGS`` when ``code`` is given."""
    env = {**os.environ, "PYTHONPATH": TESTS, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", code, *map(str, args)] if code else [SCRIPT, *map(str, args)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def snapshot(root):
    """Every file below ``root`` with its bytes: compare before and after to prove nothing was lost."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                with open(path, "rb") as handle:
                    files[os.path.relpath(path, root)] = handle.read()
    return files
