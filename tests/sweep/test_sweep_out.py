"""Rows O01-O12 and G1-G7 of the bad-input sweep: ``--out`` never loses a user's data, interruptions clean up.

Every case uses real files in a temporary directory, with a canary file beside ``--out`` and, where ``--out``
exists, one inside it: both must survive every refused run.
"""
import errno
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from zoo.cli_runner import FAST, TESTS, run_cli, run_process, snapshot

from msmodelslim.cli.output import MARKER


@pytest.fixture
def work(tmp_path, fx):
    """A user's folder: the input model, a script, a canary beside and a results folder with a file inside."""
    shutil.copytree(fx / "tiny", tmp_path / "model")
    (tmp_path / "train.py").write_text("print('my code')\n")
    (tmp_path / "results" / "exp1").mkdir(parents=True)
    (tmp_path / "results" / "exp1" / "precious.txt").write_text("weeks of work")
    return tmp_path


def _refused(run, *words, after_work=False):
    """Exit 2 with one error line; it is the last line (progress bars of work already done may precede it)."""
    assert run.rc == 2, run.stderr
    errors = [line for line in run.error_lines if line.startswith("msmodelslim")]
    assert len(errors) == 1 and run.error_lines[-1] == errors[0], run.stderr
    if not after_work:
        assert len(run.error_lines) == 1, run.stderr
    for word in words:
        assert word in errors[0], run.stderr


def _sparse(out, cwd, model="model", *extra):
    return run_cli("sparse", model, "--out", out, *FAST, *extra, cwd=cwd)


@pytest.mark.parametrize("out, words", [
    pytest.param(".", ["current directory"], id="O04-dot"),
    pytest.param("", ["--out"], id="O05-empty"),
    pytest.param("model", ["input"], id="O03-the-input-model"),
    pytest.param("model/sub", ["input"], id="O03-inside-the-input"),
    pytest.param("results", ["not empty", "--overwrite"], id="O02-user-directory"),
    pytest.param("train.py", ["not a directory"], id="O01-a-file"),
    pytest.param("train.py/sub", ["parent"], id="O07-parent-is-a-file"),
    pytest.param("missing/sub", ["parent"], id="O07-parent-missing"),
    pytest.param("/", ["root"], id="O11-root"),
    pytest.param(os.path.expanduser("~"), ["home"], id="O11-home"),
    pytest.param("/proc/sparse_out", ["/proc/sparse_out"], id="O10-proc"),
])
def test_a_dangerous_out_is_refused_before_any_work_and_nothing_changes(work, out, words):
    before = snapshot(work)
    run = _sparse(out, work)
    _refused(run, *words)
    assert snapshot(work) == before
    assert sorted(os.listdir(work)) == ["model", "results", "train.py"]  # no staging or lock left


def test_an_ancestor_of_the_current_directory_is_refused(work):
    inner = work / "results" / "exp1"
    run = run_cli("sparse", work / "model", "--out", work / "results", *FAST, cwd=inner)
    _refused(run, "current directory")
    assert (inner / "precious.txt").read_text() == "weeks of work"


def test_the_checkpoint_of_prune_transformer_is_not_a_valid_out(tmp_path, fx):
    """O12: --out = WEIGHTS."""
    big = tmp_path / "bigcopy"
    shutil.copytree(fx / "big4", big)
    before = snapshot(big)
    run = run_cli("prune-transformer", big, "--small-config", fx / "small_config.json", "--layer-map", "0:0,1:3",
                  "--out", big, "--overwrite")
    _refused(run, "input")
    assert snapshot(big) == before


def test_a_symlinked_out_is_refused_and_its_target_kept(work):
    """O08."""
    os.symlink(work / "results", work / "link")
    _refused(_sparse("link", work), "symbolic link")
    assert (work / "results" / "exp1" / "precious.txt").exists()


def test_out_is_checked_before_the_model_is_read(work):
    """A broken model and a bad --out: the --out line comes first, so no work was done."""
    (work / "model" / "model.safetensors").write_bytes(b"broken")
    _refused(_sparse("results", work), "--out 'results'")


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become nobody")
def test_a_read_only_parent_is_refused_before_any_work(tmp_path):
    """O09, as the user nobody (in a folder nobody can reach: pytest's own is private to root)."""
    import tempfile

    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c"]
    env = {**os.environ, "PYTHONPATH": TESTS}
    if subprocess.run(as_nobody + ["import msmodelslim"], capture_output=True, env=env, cwd="/").returncode:
        pytest.skip("the user nobody cannot read this checkout (it lies in a private folder)")
    reachable = tempfile.mkdtemp(prefix="msmodelslim-o09-", dir="/tmp")
    try:
        os.chmod(reachable, 0o755)
        readonly = os.path.join(reachable, "ro")
        os.mkdir(readonly, 0o555)
        os.chmod(readonly, 0o555)
        code = "import sys; from msmodelslim.cli.main import main; sys.exit(main(sys.argv[1:]))"
        proc = subprocess.run(as_nobody + [code, "sparse", "no-model", "--out", os.path.join(readonly, "out")],
                              capture_output=True, text=True, timeout=120, cwd=reachable,
                              env={**env, "HOME": reachable})
        assert proc.returncode == 2, proc.stderr
        assert "is not writable" in proc.stderr, proc.stderr
        assert os.listdir(readonly) == []
    finally:
        shutil.rmtree(reachable)


def test_a_path_with_spaces_works_and_the_result_has_the_users_umask(work):
    """O06; results are created with the user's umask, not mkdtemp's 0700."""
    out = work / "dir with spaces" / "sparse out"
    out.parent.mkdir()
    previous = os.umask(0o027)
    try:
        run = _sparse(str(out), work)
    finally:
        os.umask(previous)
    assert run.rc == 0, run.stderr
    assert (out / "model" / "config.json").exists() and (out / MARKER).exists()
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o750)
    assert oct(os.stat(out / "model.sparse.safetensors").st_mode & 0o777) == oct(0o640)
    assert oct(os.stat(out / "model").st_mode & 0o777) == oct(0o750)
    for shard in (out / "model").glob("*.safetensors"):
        assert oct(os.stat(shard).st_mode & 0o777) == oct(0o640), shard


def test_overwrite_replaces_only_an_earlier_msmodelslim_result(work):
    first = _sparse("out", work, "model", "--ratio", "0.3")
    assert first.rc == 0, first.stderr
    _refused(_sparse("out", work, "model", "--ratio", "0.7"), "not empty", "--overwrite")
    assert "0.3" in (work / "out" / "report.md").read_text()
    second = _sparse("out", work, "model", "--ratio", "0.7", "--overwrite")
    assert second.rc == 0, second.stderr
    assert "sparse_ratio=0.7" in (work / "out" / "report.md").read_text()
    assert json.loads((work / "out" / MARKER).read_text())["command"] == "sparse"
    assert sorted(os.listdir(work)) == ["model", "out", "results", "train.py"]
    _refused(_sparse("results", work, "model", "--overwrite"), "not written by msmodelslim")
    assert (work / "results" / "exp1" / "precious.txt").exists()


def test_overwrite_refuses_a_result_with_user_files_or_a_fake_marker(work):
    assert _sparse("out", work).rc == 0
    (work / "out" / "my-notes.txt").write_text("notes")
    _refused(_sparse("out", work, "model", "--overwrite"), "my-notes.txt")
    (work / "results" / MARKER).write_text("")
    _refused(_sparse("results", work, "model", "--overwrite"), "not written by msmodelslim")
    assert (work / "out" / "my-notes.txt").exists() and (work / "results" / "exp1" / "precious.txt").exists()


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "user-file"])
def test_the_lock_file_never_writes_into_a_users_file(work, kind):
    victim = work / "victim.txt"
    victim.write_text("mine")
    lock = work / ".out.msmodelslim.lock"
    if kind == "symlink":
        os.symlink(victim, lock)
    elif kind == "hardlink":
        os.link(victim, lock)
    else:
        lock.write_text("my own data")
    run = _sparse("out", work)
    _refused(run, "lock")
    assert victim.read_text() == "mine" and not (work / "out").exists()


def test_a_symlink_with_a_trailing_slash_is_still_a_symlink(work):
    os.symlink(work / "results", work / "link")
    _refused(_sparse("link/", work), "symbolic link")


def test_a_failing_move_aside_leaves_no_directory_behind(work, monkeypatch):
    assert _sparse("out", work).rc == 0
    before = snapshot(work / "out")
    real_rename = os.rename

    def rename(src, dst):
        if str(src) == str(work / "out"):
            raise OSError(errno.EPERM, "Operation not permitted (injected)")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    _refused(_sparse("out", work, "model", "--overwrite"), "left as it was", after_work=True)
    assert snapshot(work / "out") == before
    assert sorted(os.listdir(work)) == ["model", "out", "results", "train.py"]


def test_an_empty_existing_out_is_used(work):
    (work / "empty").mkdir()
    assert _sparse("empty", work).rc == 0
    assert (work / "empty" / "report.md").exists()


@pytest.mark.parametrize("failing_step", ["swap", "write"])
def test_a_failing_write_or_swap_keeps_the_earlier_result(work, monkeypatch, failing_step):
    """G6 (and a full disk while the files are written): the old result stays, no staging is left."""
    assert _sparse("out", work).rc == 0
    before = snapshot(work / "out")
    real_rename = os.rename

    def rename(src, dst):
        if failing_step == "swap" and os.path.basename(str(src)).startswith(".out.") and str(dst).endswith("out"):
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real_rename(src, dst)

    def save_pretrained(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(os, "rename", rename)
    if failing_step == "write":  # in memory (save_pretrained) or streamed (a shard with safetensors)
        import safetensors.torch
        import transformers

        monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", save_pretrained)
        monkeypatch.setattr(safetensors.torch, "save_file", save_pretrained)
    run = _sparse("out", work, "model", "--overwrite")
    _refused(run, "No space left on device", "left as it was", after_work=True)
    assert snapshot(work / "out") == before
    assert sorted(os.listdir(work)) == ["model", "out", "results", "train.py"]


_DRIVER = """
import os, signal, sys, time
from msmodelslim.cli import output
from msmodelslim.pytorch.sparse.sparse_tools import engine
moment, how = sys.argv[1], getattr(signal, sys.argv[2])
def hit():
    os.kill(os.getpid(), how)
    time.sleep(5)  # the signal arrives during this sleep
if moment == "write":  # every file of the result is in the staging directory
    marker = output.OutputDirectory._write_marker
    output.OutputDirectory._write_marker = lambda self, staging: (marker(self, staging), hit())
elif moment == "compress":  # the sparsification, streamed or in memory
    engine.Sparsifier.run = lambda self: hit()
elif moment == "hold":  # wait for a file to appear, as a long job would
    real = engine.Sparsifier.run
    def slow(self):
        open(sys.argv[3], "w").close()
        while os.path.exists(sys.argv[3]): time.sleep(0.1)
        return real(self)
    engine.Sparsifier.run = slow
from msmodelslim.cli.main import main
sys.exit(main(sys.argv[4:]))
"""


def test_a_signal_during_the_swap_is_held_until_the_result_is_in_place(work):
    """SIGTERM arriving while the result is swapped in: the swap completes, then the run stops and says so."""
    assert _sparse("out", work).rc == 0
    driver = _DRIVER.replace('if moment == "write":', 'if moment == "swap":\n'
                             '    swap = output._swap_in\n'
                             '    output._swap_in = lambda *a: (os.kill(os.getpid(), how), swap(*a))\n'
                             'elif moment == "write":')
    run = run_process("swap", "SIGTERM", "-", "sparse", "model", "--out", "out", "--overwrite", "--ratio", "0.3",
                      *FAST, cwd=work, code=driver)
    assert run.rc == 143, run.stderr
    assert "had just been written" in run.error_lines[-1]
    assert "sparse_ratio=0.3" in (work / "out" / "report.md").read_text()
    assert sorted(os.listdir(work)) == ["model", "out", "results", "train.py"]


@pytest.mark.parametrize("moment, how, rc", [
    pytest.param("compress", "SIGINT", 130, id="G1"),
    pytest.param("write", "SIGINT", 130, id="G2"),
    pytest.param("compress", "SIGTERM", 143, id="G5"),
    pytest.param("write", "SIGTERM", 143, id="G4"),
    pytest.param("write", "SIGKILL", -9, id="G3"),
])
def test_an_interrupted_run_leaves_the_earlier_result_and_no_staging(work, moment, how, rc):
    assert _sparse("out", work).rc == 0
    before = snapshot(work / "out")
    run = run_process(moment, how, "-", "sparse", "model", "--out", "out", "--overwrite", *FAST, cwd=work,
                      code=_DRIVER)
    assert run.rc == rc, run.stderr
    assert snapshot(work / "out") == before
    left = sorted(os.listdir(work))
    if how == "SIGKILL":  # nothing can clean up after SIGKILL; the hidden staging is never taken for a result
        assert [n for n in left if not n.startswith(".")] == ["model", "out", "results", "train.py"]
    else:
        assert left == ["model", "out", "results", "train.py"]
        assert run.error_lines[-1].startswith("msmodelslim: ") and "nothing was written" in run.error_lines[-1]


def _hold_first_run(work, flag, out="out"):
    process = subprocess.Popen([sys.executable, "-c", _DRIVER, "hold", "SIGINT", str(flag), "sparse", "model",
                                "--out", out, *FAST], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": TESTS})
    deadline = time.time() + 240
    while not flag.exists():
        assert process.poll() is None and time.time() < deadline, process.stderr.read() if process.stderr else ""
        time.sleep(0.2)
    return process


def test_files_added_to_out_during_the_run_are_kept(work):
    """--out created by the user while the job runs: the job does not replace it."""
    flag = work / "holding"
    first = _hold_first_run(work, flag, "fresh")
    (work / "fresh").mkdir()
    (work / "fresh" / "mine.txt").write_text("added during the run")
    flag.unlink()
    _, stderr = first.communicate(timeout=240)
    assert first.returncode == 2 and "changed while msmodelslim was running" in stderr, stderr
    assert (work / "fresh" / "mine.txt").read_text() == "added during the run"
    assert sorted(os.listdir(work)) == ["fresh", "model", "results", "train.py"]


def test_a_second_run_on_the_same_out_exits_2_naming_the_first(work):
    """G7: a lock beside --out; the first run finishes normally."""
    flag = work / "holding"
    first = subprocess.Popen([sys.executable, "-c", _DRIVER, "hold", "SIGINT", str(flag), "sparse", "model",
                              "--out", "out", *FAST], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": TESTS})
    try:
        deadline = time.time() + 240
        while not flag.exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.stderr else ""
            time.sleep(0.2)
        second = _sparse("out", work)
        _refused(second, "another msmodelslim run", f"pid {first.pid}")
    finally:
        if flag.exists():
            flag.unlink()
        _, stderr = first.communicate(timeout=240)
    assert first.returncode == 0, stderr
    assert (work / "out" / "report.md").exists()
    assert sorted(os.listdir(work)) == ["model", "out", "results", "train.py"]
