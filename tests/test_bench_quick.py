"""Every benchmark script runs with ``--quick`` into a temporary folder, and its tables keep the columns of the
published results file: a broken script or a renamed column cannot go unnoticed until the next full run."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import plots  # noqa: E402
import run_all  # noqa: E402

SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("bench_*.py"))


def _columns(headers):
    """Headers with their numbers blanked ('(mean of 3 seeds)' and '(mean of 1 seeds)' are the same column), and a
    run of columns that differ only in a number counted once (one column per token budget measured)."""
    columns = [re.sub(r"\d[\d,.]*", "N", header) for header in headers]
    return [column for i, column in enumerate(columns) if i == 0 or column != columns[i - 1]]


def test_run_all_knows_every_script():
    assert sorted(run_all.SCRIPTS.values()) == SCRIPTS


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Every script's ``--quick`` run, one after the other: ``{script: (completed process, results folder)}``."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(BENCHMARKS)])}
    environment.pop("LLMCOMPRESSOR_PYTHON", None)  # the comparison needs a second environment: not in a smoke run

    def run(script):
        folder = tmp_path_factory.mktemp(script.removesuffix(".py"))
        proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", "--results", str(folder)],
                              capture_output=True, text=True, cwd=ROOT, env=environment, timeout=600)
        return script, (proc, folder)

    return dict(map(run, SCRIPTS))


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_run_writes_the_published_columns(script, quick_runs):
    name = next(key for key, value in run_all.SCRIPTS.items() if value == script)
    proc, folder = quick_runs[script]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = folder / f"{name}.md"
    assert written.exists(), sorted(p.name for p in folder.iterdir())
    assert "commit " in written.read_text()  # provenance heads every results file
    published, quick = ({} for _ in range(2))
    for tables, path in ((published, BENCHMARKS / "results" / f"{name}.md"), (quick, written)):
        for heading, headers, _ in plots.read_tables(path):
            tables.setdefault(heading, []).append(_columns(headers))
    assert quick, f"{script} --quick wrote no table"
    for heading, columns in quick.items():  # sections measured in the smoke run keep the published columns
        if heading in published:
            assert columns == published[heading], heading
