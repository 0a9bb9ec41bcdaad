"""Mutation check: behaviours that once no fast test could catch must now fail one.

Each mutation is a one-line change to a copy of the package; the targeted tests run against that copy and must
fail. The same tests first run against an unchanged copy and must pass (so a broken environment cannot pass for a
killed mutation). Run: python tests/mutation_check.py  (exit status 1 names the mutations that survived).
"""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    module: str  # path of the file inside the repository
    original: str  # a line (stripped of indentation) that occurs exactly once
    mutated: str
    tests: tuple


MUTATIONS = (
    Mutation("the attention mask never reaches the mask-taking distillation losses",
             "msmodelslim/pytorch/knowledge_distill/dual_model.py",
             "if takes_mask and mask is not None and tuple(mask.shape) == tuple(student.shape[:-1]):",
             "if False:",
             ("tests/pytorch/knowledge_distill/test_dual_model.py::"
              "test_padded_positions_do_not_change_a_masked_loss",)),
    Mutation("OWL run backwards: outlier-rich blocks pruned harder",
             "msmodelslim/pytorch/sparse/sparse_tools/allocation.py",
             "ratios = target - (scaled - scaled.mean())",
             "ratios = target + (scaled - scaled.mean())",
             ("tests/pytorch/sparse/test_sparse_tools.py::test_owl_prunes_the_block_with_planted_outliers_less",)),
    Mutation("weight importance keeps the least important hidden channels",
             "msmodelslim/common/prune/transformer_prune/weight_importance.py",
             "group.keep = top_indices(channel_scores, group.small)",
             "group.keep = top_indices(-channel_scores if group is layout.hidden else channel_scores, group.small)",
             ("tests/common/prune/test_prune_model_weight.py::"
              "test_weight_importance_keeps_the_live_hidden_channels_heads_and_neurons",)),
)


def _copy_package(destination):
    shutil.copytree(ROOT / "msmodelslim", destination / "msmodelslim",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _apply(copy_root, mutation):
    path = copy_root / mutation.module
    lines = path.read_text().splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.strip() == mutation.original]
    if len(hits) != 1:
        raise SystemExit(f"{mutation.name}: the line to mutate occurs {len(hits)} times in {mutation.module} "
                         f"(expected once): {mutation.original!r}")
    line = lines[hits[0]]
    lines[hits[0]] = line[:len(line) - len(line.lstrip())] + mutation.mutated + "\n"
    path.write_text("".join(lines))


def _run_tests(copy_root, tests):
    """Whether ``tests`` pass with the package imported from ``copy_root``."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy_root), str(ROOT / "tests")]),
                   "PYTHONDONTWRITEBYTECODE": "1"}
    # started outside the work tree (whose directory would come first on sys.path), on absolute test paths
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-o", "addopts=",
                           *(str(ROOT / test) for test in tests)], cwd=copy_root, env=environment,
                          capture_output=True, text=True)
    return proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _imports_from(copy_root):
    """Check that a process started as the tests are imports the package from the copy, not the work tree."""
    environment = {**os.environ, "PYTHONPATH": str(copy_root)}
    proc = subprocess.run([sys.executable, "-c", "import msmodelslim; print(msmodelslim.__file__)"], cwd=copy_root,
                          env=environment, capture_output=True, text=True)
    return pathlib.Path(proc.stdout.strip()).is_relative_to(copy_root)


def main():
    survived = []
    with tempfile.TemporaryDirectory(prefix="msmodelslim-mutation-") as folder:
        control = pathlib.Path(folder) / "control"
        _copy_package(control)
        if not _imports_from(control):
            raise SystemExit("the copy of the package is not the one imported: the check would prove nothing")
        passed, log = _run_tests(control, [test for mutation in MUTATIONS for test in mutation.tests])
        if not passed:
            raise SystemExit(f"control: the targeted tests fail without any mutation:\n{log}")
        mutants = []
        for index, mutation in enumerate(MUTATIONS):
            copy_root = pathlib.Path(folder) / f"mutant{index}"
            _copy_package(copy_root)
            _apply(copy_root, mutation)
            mutants.append((copy_root, mutation))
        with ThreadPoolExecutor(max_workers=len(mutants)) as pool:  # mostly interpreter start-up and imports
            outcomes = list(pool.map(lambda item: _run_tests(item[0], item[1].tests)[0], mutants))
        for (_, mutation), passed in zip(mutants, outcomes):
            print(f"{'SURVIVED' if passed else 'killed  '}  {mutation.name}", flush=True)
            if passed:
                survived.append(mutation.name)
    if survived:
        raise SystemExit(f"mutations no test catches: {'; '.join(survived)}")


if __name__ == "__main__":
    main()
