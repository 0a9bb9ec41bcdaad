"""Run every benchmark script, each in its own process, and regenerate benchmarks/results/*.md.

Run: python benchmarks/run_all.py [--quick] [names ...]   (names: prune transformer_prune sparse distill)
"""
import argparse
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
SCRIPTS = {"prune": "bench_prune.py", "transformer_prune": "bench_transformer_prune.py", "sparse": "bench_sparse.py",
           "distill": "bench_distill.py"}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {', '.join(SCRIPTS)}")
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in SCRIPTS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SCRIPTS)}")
    failed = []
    for name in args.names or list(SCRIPTS):
        start = time.perf_counter()
        command = [sys.executable, str(HERE / SCRIPTS[name])] + (["--quick"] if args.quick else [])
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, cwd=HERE).returncode:
            failed.append(name)
        print(f"== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
