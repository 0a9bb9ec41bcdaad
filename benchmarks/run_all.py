"""Run every benchmark script, each in its own process, regenerate benchmarks/results/*.md and their charts
(*.png), and copy the tables and charts into the README's Benchmarks section (between its two marker comments).

Run: python benchmarks/run_all.py [--quick] [--readme-only] [names ...]
     (names: prune prune_fuzz prune_sweep transformer_prune sparse distill mindspore slim)
"""
import argparse
import pathlib
import subprocess
import sys
import time

import plots

HERE = pathlib.Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
SUMMARY_ONLY = {"prune_sweep"}  # results too long for the README: its summary, and a link to the whole file
SCRIPTS = {"prune": "bench_prune.py", "prune_fuzz": "bench_prune_fuzz.py", "prune_sweep": "bench_prune_sweep.py",
           "transformer_prune": "bench_transformer_prune.py", "sparse": "bench_sparse.py",
           "distill": "bench_distill.py", "mindspore": "bench_mindspore.py", "slim": "bench_slim.py",
           "gpu": "bench_gpu.py"}
# results a script writes in another mode (bench_slim.py --device cuda), shown after its main results
MORE_RESULTS = {"slim": ("slim_gpu", "slim_minilm")}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {', '.join(SCRIPTS)}")
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--readme-only", action="store_true",
                        help="only redraw the charts and copy the existing tables into the README")
    args = parser.parse_args()
    if args.readme_only:
        update_readme(redraw=list(SCRIPTS))
        return
    unknown = [name for name in args.names if name not in SCRIPTS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SCRIPTS)}")
    failed, names = [], args.names or list(SCRIPTS)
    for name in names:
        start = time.perf_counter()
        command = [sys.executable, str(HERE / SCRIPTS[name])] + (["--quick"] if args.quick else [])
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, cwd=HERE).returncode:
            failed.append(name)
        print(f"== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    update_readme(redraw=[name for name in names if name not in failed])
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


def update_readme(redraw=()):
    """Redraw the charts of the benchmarks named in ``redraw`` that have some, then replace the README's Benchmarks
    section with the current result files (headings moved two levels down) and their charts."""
    for name in [more for name in redraw for more in (name,) + MORE_RESULTS.get(name, ())]:
        if name in plots.CHARTS:  # benchmarks without charts (mindspore) have tables only
            plots.draw(name)
        if name in plots.CURVES:
            plots.draw_curves(name)
    parts = []
    for name in [more for name in SCRIPTS for more in (name,) + MORE_RESULTS.get(name, ())]:
        path = HERE / "results" / f"{name}.md"
        if path.exists():
            text = path.read_text().strip()
            if name in SUMMARY_ONLY:
                text = _summary(text, path.name)
            chart_names = [chart[0] for chart in plots.CHARTS.get(name, []) + plots.CURVES.get(name, [])]
            charts = [path.parent / f"{name}_{chart}.png" for chart in chart_names]
            charts = sorted(chart for chart in charts if chart.exists())
            lines = ["##" + line if line.startswith("#") else line for line in text.splitlines()]
            lines += [""] + [f"![{chart.stem}](benchmarks/results/{chart.name})" for chart in charts] if charts else []
            parts.append("\n".join(lines))
    readme = README.read_text()
    if START not in readme or END not in readme:
        sys.exit(f"README.md has no {START} ... {END} markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + START + "\n" + "\n\n".join(parts) + "\n" + END + tail)


def _summary(text, filename):
    """The title, the generator line and the first section of a results file, with a link to the rest."""
    head, _, rest = text.partition("\n## ")
    first = rest.split("\n## ", 1)[0]
    return (f"{head}\n## {first.strip()}\n\nPer model type, the reasons for stopping short and the crashes: "
            f"[benchmarks/results/{filename}](benchmarks/results/{filename}).")


if __name__ == "__main__":
    main()
