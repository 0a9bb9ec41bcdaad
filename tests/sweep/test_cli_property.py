"""Generated command lines (hypothesis): whatever the arguments, the command line succeeds or exits 2 with one line,
never raises, and never changes or deletes a file it did not create.

Each example gets a fresh user folder: the input model, a script, a non-empty results folder with a canary file,
an earlier msmodelslim result, a symbolic link, an empty folder; ``--out`` is drawn among them and new names.
"""
import os
import shutil
import tempfile

import pytest
from zoo.cli_runner import run_cli, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msmodelslim.cli.output import MARKER

OUTS = [".", "", "model", "model/sub", "results", "results/exp1", "train.py", "train.py/x", "link", "missing/x",
        "earlier", "empty", "new", "new dir é", "/", "~", "..", "results/../model"]
FACTORY = '''
import torch.nn as nn
def cnn():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 4))
'''

_text = st.text(alphabet="ab:,.-_/ 0123456789é\n", max_size=12)
_sparse_options = st.lists(st.sampled_from([
    ["--ratio", "0.5"], ["--ratio", "1.5"], ["--ratio", "x"], ["--pattern", "2:4"], ["--pattern", "4:2"],
    ["--pattern", "2:4096"], ["--method", "bogus"], ["--method", "weight_magnitude"], ["--owl"], ["--overwrite"],
    ["--calib", "train.py"], ["--calib", "calib.txt"], ["--calib", "results"], ["--samples", "0"],
    ["--seq-len", "-1"], ["--bogus"]]), max_size=3)
_prune_options = st.lists(st.sampled_from([
    ["--ratio", "0.5"], ["--ratio", "0"], ["--input-shape", "1,3,8,8"], ["--input-shape", "1,5,8,8"],
    ["--input-shape=-1,3,8,8"], ["--input-shape", "0,3,8,8"], ["--weights", "train.py"], ["--weights", "model"],
    ["--align", "0"], ["--importance", "activation"], ["--overwrite"]]), max_size=3)


def _user_folder(tiny):
    root = tempfile.mkdtemp(prefix="msmodelslim-prop-")
    shutil.copytree(tiny, os.path.join(root, "model"))
    with open(os.path.join(root, "train.py"), "w") as handle:
        handle.write("print('mine')\n")
    os.makedirs(os.path.join(root, "results", "exp1"))
    with open(os.path.join(root, "results", "exp1", "precious.txt"), "w") as handle:
        handle.write("canary")
    os.makedirs(os.path.join(root, "earlier"))
    with open(os.path.join(root, "earlier", MARKER), "w") as handle:
        handle.write("{}")
    with open(os.path.join(root, "earlier", "report.md"), "w") as handle:
        handle.write("old result")
    os.makedirs(os.path.join(root, "empty"))
    os.symlink(os.path.join(root, "results"), os.path.join(root, "link"))
    with open(os.path.join(root, "calib.txt"), "w") as handle:
        handle.write("Some calibration text about models.\n\n" * 200)
    with open(os.path.join(root, "propfactory.py"), "w") as handle:
        handle.write(FACTORY)
    return root


def _check(root, argv, out):
    before = snapshot(root)
    run = run_cli(*argv, cwd=root)
    assert run.rc in (0, 2), (argv, run.stderr)
    if run.rc == 2:
        errors = [line for line in run.error_lines if "error" in line]
        assert errors and run.error_lines[-1] == errors[-1], (argv, run.stderr)
    written = os.path.realpath(os.path.join(root, out)) if run.rc == 0 else None
    after = snapshot(root)
    for name, content in before.items():
        path = os.path.realpath(os.path.join(root, name))
        if written and (path + os.sep).startswith(written + os.sep):
            continue  # the earlier result or empty folder that this run replaced
        assert after.get(name) == content, (argv, name, run.stderr)
    new = {name for name in after if name not in before}
    if written:
        assert os.path.isfile(os.path.join(written, MARKER)), argv
        assert all(os.path.realpath(os.path.join(root, n)).startswith(written + os.sep) for n in new), (argv, new)
    else:
        assert not new, (argv, new, run.stderr)
    assert not [n for n in os.listdir(root) if n.startswith(".")], (argv, os.listdir(root))


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(out=st.sampled_from(OUTS) | _text, options=_sparse_options)
def test_sparse_command_lines_never_lose_a_file(fx, out, options):
    root = _user_folder(fx / "tiny")
    try:
        argv = ["sparse", "model", "--out", out, "--samples", "1", "--seq-len", "16", "--eval-samples", "1"]
        _check(root, argv + [a for option in options for a in option], out)
    finally:
        shutil.rmtree(root)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(out=st.sampled_from(OUTS) | _text, options=_prune_options, factory=st.sampled_from(
    ["propfactory:cnn", "propfactory", "propfactory:nope", ":cnn", "no_such:cnn"]))
def test_prune_command_lines_never_lose_a_file(fx, out, options, factory):
    root = _user_folder(fx / "tiny")
    try:
        argv = ["prune", factory, "--input-shape", "1,3,8,8", "--ratio", "0.6", "--align", "4", "--out", out]
        _check(root, argv + [a for option in options for a in option], out)
    finally:
        shutil.rmtree(root)
