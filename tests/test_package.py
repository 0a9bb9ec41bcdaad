import subprocess
import sys

CODE = r"""
import sys, time
import torch
t0 = time.perf_counter()
import msmodelslim
elapsed = time.perf_counter() - t0
heavy = [m for m in ("transformers", "accelerate", "gguf", "onnx", "sklearn", "torch_pruning", "matplotlib")
         if m in sys.modules]
print(elapsed, ",".join(heavy))
"""


def test_import_is_light_and_fast():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.split()
    elapsed = float(out[0])
    assert elapsed < 1.0
    assert len(out) == 1, f"heavy modules imported by `import msmodelslim`: {out[1]}"


def test_version():
    import msmodelslim

    assert msmodelslim.__version__.count(".") == 2
