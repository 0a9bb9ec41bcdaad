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


NO_FRAMEWORK = r"""
import sys
sys.modules["torch"] = None       # importing either framework now raises ImportError
sys.modules["mindspore"] = None
import msmodelslim
from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig, get_distill_model
config = PruneConfig().set_steps(["prune_blocks"]).add_blocks_params(r"layers\.(\d+)\.", {0: 0})
KnowledgeDistillConfig().set_hard_label(0.5, 0)
for call in (lambda: prune_model_weight(object(), config, "w.ckpt"), lambda: get_distill_model(object(), object(),
             KnowledgeDistillConfig())):
    try:
        call()
    except ValueError as exc:
        assert "The model must be a MindSpore or PyTorch model" in str(exc), exc
    else:
        raise AssertionError("accepted a model of neither framework")
print("ok")
"""


def test_configs_and_front_doors_need_no_framework():
    """The framework-neutral entry points import neither torch nor MindSpore; a model of neither is refused."""
    proc = subprocess.run([sys.executable, "-c", NO_FRAMEWORK], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
