"""The mutation check runs as part of the suite: every planted one-line defect must fail its targeted test."""
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parent / "mutation_check.py"


def test_every_mutation_is_killed():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) >= 3 and all(line.startswith("killed") for line in lines), proc.stdout
