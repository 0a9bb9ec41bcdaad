"""Every measured figure in the README's prose comes from a results file: each README sentence below is matched by
a pattern whose groups must equal the cells (or sentences) of ``benchmarks/results/*.md`` that it cites. A re-run
benchmark that changes a figure fails this test until the prose says the same."""
import pathlib
import re
import sys
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import plots  # noqa: E402


@dataclass(frozen=True)
class Cell:
    """The cell in ``column`` of the row whose columns equal ``row`` in the table under the heading ``section``."""
    file: str
    section: str
    row: tuple
    column: str
    form: str = "{}"  # how the README writes the number, e.g. "{:,.0f}"

    def value(self):
        for heading, headers, rows in plots.read_tables(ROOT / "benchmarks" / "results" / self.file):
            if heading != self.section:
                continue
            for cells in rows:
                record = dict(zip(headers, cells))
                if all(record.get(key) == value for key, value in self.row):
                    text = record[self.column].split(" (")[0]  # a median followed by its (min-max)
                    return self.form.format(float(text.rstrip("%x").replace(",", ""))) if self.form != "{}" else text
        raise AssertionError(f"{self.file}: no row {dict(self.row)} under '## {self.section}'")


@dataclass(frozen=True)
class Text:
    """The first group of ``pattern`` in a results file's text."""
    file: str
    pattern: str
    form: str = "{}"  # how the README writes the number, e.g. "{:,.0f}" for 1000 written as 1,000

    def value(self):
        match = re.search(self.pattern, (ROOT / "benchmarks" / "results" / self.file).read_text())
        assert match, f"{self.file}: nothing matches {self.pattern!r}"
        return self.form.format(float(match.group(1))) if self.form != "{}" else match.group(1)


@dataclass(frozen=True)
class Extreme:
    """The smallest (or the largest) number in ``column`` of the table under ``section``: a range the README
    quotes, whichever rows hold its ends."""
    file: str
    section: str
    column: str
    largest: bool = False
    form: str = "{:.2f}"

    def value(self):
        for heading, headers, rows in plots.read_tables(ROOT / "benchmarks" / "results" / self.file):
            if heading == self.section:
                numbers = [float(dict(zip(headers, cells))[self.column].split(" (")[0]) for cells in rows]
                return self.form.format(max(numbers) if self.largest else min(numbers))
        raise AssertionError(f"{self.file}: no table under '## {self.section}'")


@dataclass(frozen=True)
class Ratio:
    """``numerator / denominator`` of two cells, written with ``form``."""
    numerator: Cell
    denominator: Cell
    form: str = "{:.2f}"

    def value(self):
        return self.form.format(float(self.numerator.value()) / float(self.denominator.value().split(" / ")[0]))


@dataclass(frozen=True)
class Derived:
    """``combine`` of the values of ``cells`` (the first of "a / b" pairs), written with ``form``: a difference or a
    reduction the README quotes."""
    cells: tuple
    combine: object
    form: str = "{:.0f}"

    def value(self):
        return self.form.format(self.combine(*(float(cell.value().split(" / ")[0]) for cell in self.cells)))


def row(**columns):
    return tuple((key.replace("_", " "), value) for key, value in columns.items())


SPARSE, COMPARE = "SmolLM2-135M", "SmolLM2-135M: msmodelslim and llm-compressor side by side"
GPU, STREAM = "Sparse tool on the GPU: time and memory", "A checkpoint streamed block by block through the GPU"
TP_MINILM, TP_SMOL = "MiniLM-L6 (real BERT encoder)", "SmolLM2-135M (real Llama, grouped-query attention)"
TP_DEPTH = 'Which layers to keep: hand-picked maps and layer_id_map="auto"'
LATENCY, BUDGETS = "CPU latency at 50 % of the parameters", "Budgets in MACs and in measured latency"
CRITERIA, DISTILL = "Importance criteria on trained networks", "BBC News classification"


def sp(setting, method, column="perplexity", form="{}"):
    return Cell("sparse.md", SPARSE, row(setting=setting, method=method), column, form)


def cmp(setting, tool, method, column="perplexity", form="{}"):
    return Cell("sparse.md", COMPARE, (("setting", setting), ("tool", tool), ("method", method)), column, form)


def minilm_row(label, column):
    return Cell("slim_minilm.md", "Embedding cosine", row(row=label), column)


def slim_gpu(label):
    """The last perplexity of a row of the GPU slim table."""
    return Text("slim_gpu.md", r"\| " + re.escape(label) + r" +\|.*\| +(\S+) \| +\S+x +\|")


def gpu(model, method, setting, column="seconds", form="{}"):
    return Cell("gpu.md", GPU, row(model=model, method=method, setting=setting), column, form)


def budget(model, kind, importance, column="latency ratio (CPU)", form="{}"):
    return Cell("prune.md", BUDGETS, (("model", model), ("budget", kind), ("importance", importance)), column, form)


def minilm(importance, column):
    return Cell("transformer_prune.md", TP_MINILM, (("small shape", "3 layers, FFN 768"), ("importance", importance)),
                column)


def depth(model, layer_map, column, form="{}"):
    return Cell("transformer_prune.md", TP_DEPTH, (("model", model), ("layer map", layer_map)), column, form)


EFF, RESNET, MINI = ("EfficientNet-Lite0 (ImageNet weights)", "ResNet-50 (random weights)",
                     "all-MiniLM-L6 (sentence embeddings)")
SMOL20, MINI3 = "SmolLM2-135M -> 20 layers", "MiniLM-L6 -> 3 layers"
PLAIN, WANDA_LS = "hessian, reconstruct=False", "magnitude, reconstruct=True"

FIGURES = [
    # sparse tool, SmolLM2-135M
    (r"dense perplexity (\S+)\): at", [sp("dense", "-")]),
    (r"perplexity (\S+) with `hessian` \(SparseGPT \+ reconstruction\), (\S+) with `magnitude` \(Wanda\),"
     r"\s+(\S+)-(\S+) with",
     [sp("50% unstructured", "hessian"), sp("50% unstructured", "magnitude"),
      sp("50% unstructured", "par_v2", form="{:.1f}"), sp("50% unstructured", "par", form="{:.1f}")]),
    (r"`par`/`par_v2` and (\S+) with `weight_magnitude`; at 2:4, (\S+) / (\S+) / (\S+)-(\S+) / (\S+)\.",
     [sp("50% unstructured", "weight_magnitude", form="{:.0f}"), sp("2:4", "hessian", form="{:.1f}"),
      sp("2:4", "magnitude", form="{:.0f}"), sp("2:4", "par", form="{:.0f}"), sp("2:4", "par_v2", form="{:.0f}"),
      sp("2:4", "weight_magnitude", form="{:.0f}")]),
    (r"control row in each environment giving the same (\S+)\)", [cmp("dense", "llm-compressor", "-")]),
    (r"layers compared, (\S+) against (\S+ / \S+) at 50 % and\s+(\S+) against (\S+) at 2:4",
     [cmp("50% unstructured", "msmodelslim", "magnitude"), cmp("50% unstructured", "llm-compressor", "Wanda"),
      cmp("2:4", "msmodelslim", "magnitude"), cmp("2:4", "llm-compressor", "Wanda")]),
    (r"rounding\): (\S+) against llm-compressor's (\S+ / \S+) at 50 % and (\S+)\s+against (\S+ / \S+) at 2:4",
     [cmp("50% unstructured", "msmodelslim", PLAIN), cmp("50% unstructured", "llm-compressor", "SparseGPT"),
      cmp("2:4", "msmodelslim", PLAIN), cmp("2:4", "llm-compressor", "SparseGPT")]),
    (r"parity \((\S+)x and (\S+)x\)",
     [Text("sparse.md", r"50% unstructured: hessian, reconstruct=False / llm-compressor SparseGPT perplexity (\S+);"),
      Text("sparse.md", r"2:4: hessian, reconstruct=False / llm-compressor SparseGPT perplexity (\S+)\.")]),
    (r"\*\*(\S+) at 50 % \((\S+)x llm-compressor's SparseGPT\) and (\S+) at 2:4 \((\S+)x\)\*\*",
     [cmp("50% unstructured", "msmodelslim", "hessian"),
      Text("sparse.md", r"50% unstructured: hessian / llm-compressor SparseGPT perplexity (\S+);"),
      cmp("2:4", "msmodelslim", "hessian"),
      Text("sparse.md", r"2:4: hessian / llm-compressor SparseGPT perplexity (\S+);")]),
    (r"`hessian` gives (\S+) there\s+against (\S+) in the methods table",
     [cmp("50% unstructured", "msmodelslim", "hessian"), sp("50% unstructured", "hessian")]),
    (r"`reconstruct=True`\) gives (\S+) and (\S+)\.",
     [cmp("50% unstructured", "msmodelslim", WANDA_LS), cmp("2:4", "msmodelslim", WANDA_LS)]),
    (r"its two rounds differ \((\S+) and (\S+) at 2:4\)",
     [Text("sparse.md", r"\| 2:4 +\| llm-compressor \| SparseGPT +\| +(\S+) / \S+ \|"),
      Text("sparse.md", r"\| 2:4 +\| llm-compressor \| SparseGPT +\| +\S+ / (\S+) \|")]),
    (r"the first block's masks agree on (\S+) % of the\s+weights",
     [cmp("50% unstructured", "llm-compressor", "SparseGPT", "mask agreement model.layers.0.self_attn.q_proj",
          "{:.0f}")]),
    (r"statistics \(the X\^T X products\) takes (\S+) s\s+against (\S+) s for `magnitude`, whose whole run takes "
     r"(\S+) s, and the\s+reconstruction adds about (\S+) s",
     [cmp("50% unstructured", "msmodelslim", "hessian", "statistics s"),
      cmp("50% unstructured", "msmodelslim", "magnitude", "statistics s"),
      cmp("50% unstructured", "msmodelslim", "magnitude", "seconds"),
      Derived((cmp("50% unstructured", "msmodelslim", "hessian", "solve s"),
               cmp("50% unstructured", "msmodelslim", PLAIN, "solve s")), lambda a, b: a - b)]),
    (r"the reconstruction buys (\S+)-(\S+) % lower perplexity",
     [Derived((cmp("50% unstructured", "msmodelslim", "hessian"), cmp("50% unstructured", "msmodelslim", PLAIN)),
              lambda a, b: 100 * (1 - a / b)),
      Derived((cmp("2:4", "msmodelslim", "hessian"), cmp("2:4", "msmodelslim", PLAIN)),
              lambda a, b: 100 * (1 - a / b))]),
    (r"`hessian` takes (\S+)x \(50 %\) and (\S+)x \(2:4\)\s+llm-compressor's time - the 0\.7x goal is met at 50 %;"
     r"[^-]+- and (\S+)x `magnitude`'s",
     [Text("sparse.md", r"50% unstructured: hessian / llm-compressor SparseGPT time (\S+);"),
      Text("sparse.md", r"2:4: hessian / llm-compressor SparseGPT time (\S+);"),
      Text("sparse.md", r"50% unstructured: hessian / magnitude time (\S+);")]),
    (r"model's file is about (\d+) % of the dense one",
     [Cell("sparse.md", SPARSE, row(setting="50% unstructured", method="hessian"), "export / dense file", "{:.0f}")]),
    # sparse tool on the GPU
    (r"`hessian` takes (\S+)x `magnitude`'s time on a 1\.0 B model \((\S+) s; (\S+) s op by op\) and (\S+)x on a 7 B",
     [Text("gpu.md", r"Llama 1\.0 B \([^)]*\): hessian / magnitude = (\S+)x"),
      gpu("Llama 1.0 B", "hessian", "50 %, CUDA graphs", form="{:.2f}"),
      gpu("Llama 1.0 B", "hessian", "50 %, op by op"),
      Text("gpu.md", r"Llama 7 B shape \([^)]*\): hessian / magnitude = (\S+)x")]),
    (r"the 1\.0 B model peaks at (\S+) GiB of\s+GPU memory against (\S+) GiB in memory",
     [Cell("gpu.md", STREAM, row(model="Llama 1.0 B", path="streamed (sparsify_checkpoint, device='cuda')"),
           "peak GPU GiB"),
      Cell("gpu.md", STREAM, row(model="Llama 1.0 B", path="in memory (from_pretrained, then Compressor on cuda)"),
           "peak GPU GiB")]),
    (r"\(cuSPARSELt (\S+)x to (\S+)x per Linear, (\S+)x to (\S+)x for the\s+1\.0 B model's forward",
     [Text("gpu.md", r"\| 4096x4096 +\| +16 \|[^|]+\|[^|]+\| (\S+)x"),
      Text("gpu.md", r"\| 11008x4096 +\| 16,384 \|[^|]+\|[^|]+\| (\S+)x"),
      Text("gpu.md", r"\| Llama 1\.0 B +\| 1 x 128 +\|[^|]+\|[^|]+\| (\S+)x"),
      Text("gpu.md", r"\| Llama 1\.0 B +\| 16 x 1024 +\|[^|]+\|[^|]+\| (\S+)x")]),
    # PruneTorch
    (r"on the (\d+)-model test zoo, (\S+) models reach 50 % of their\s+parameters and replay exactly, against (\S+) "
     r"for torch-pruning",
     [Text("prune.md", r"msmodelslim \d+/(\d+),"), Text("prune.md", r"msmodelslim (\d+/\d+),"),
      Text("prune.md", r"BasePruner (\d+/\d+)")]),
    (r"at 80 %,\s+the top-1 agreement with the dense model on (\d+) crops of the two photographs scikit-learn ships "
     r"is (\S+) with\s+`\"activation\"` and (\S+) with `\"l1\"`",
     [Text("prune.md", r"top-1 agreement with the dense model on (\d+) crops"),
      Cell("prune.md", CRITERIA, row(model="EfficientNet-Lite0", importance="activation"),
           "accuracy / top-1 agreement before fine-tuning"),
      Cell("prune.md", CRITERIA, row(model="EfficientNet-Lite0", importance="l1"),
           "accuracy / top-1 agreement before fine-tuning")]),
    (r"(\S+) in `benchmarks/results/prune_fuzz.md`\) and a sweep",
     [Text("prune_fuzz.md", r"\*\*(\d+) generated models\*\*", "{:,.0f}")]),
    (r"a (\d+)-type sample in", [Text("prune_sweep.md", r"\*\*(\d+) of the \d+ model types\*\*")]),
    (r"at 50 % of the parameters, before fine-tuning: l1 (\S+), random (\S+);",
     [Cell("prune.md", CRITERIA, row(model="digits CNN", importance="l1"),
           "accuracy / top-1 agreement before fine-tuning"),
      Cell("prune.md", CRITERIA, row(model="digits CNN", importance="random"),
           "accuracy / top-1 agreement before fine-tuning")]),
    (r"CPU latency falls\s+to (\S+)-(\S+) of the dense model", [Extreme("prune.md", LATENCY, "latency ratio"), Extreme("prune.md", LATENCY, "latency ratio", largest=True)]),
    (r"ResNet-50 reaches (\S+) \(l1\) and (\S+) \(activation importance\), all-MiniLM-L6 (\S+) and (\S+), and"
     r"\s+EfficientNet-Lite0 (\S+) and (\S+) with `set_node_reserved_ratio\(0\.75\)` \((\d+) % of its MACs left",
     [budget(model, "50 % of latency", importance)
      for model in (RESNET, MINI, EFF) for importance in ("l1", "activation")]
     + [budget(EFF, "50 % of latency", "activation", "MACs kept", "{:.0f}")]),
    # prune_model_weight
    (r"mean cosine of sentence embeddings to the teacher (\S+) \(first\) / (\S+) \(weight\) / (\S+) \(activation\)",
     [minilm("first", "cosine to teacher"), minilm("weight", "cosine to teacher"),
      minilm("activation", "cosine to teacher")]),
    (r"linear-probe accuracy (\S+) / (\S+) / (\S+) \(teacher (\S+)\)",
     [minilm("first", "BBC probe accuracy"), minilm("weight", "BBC probe accuracy"),
      minilm("activation", "BBC probe accuracy"),
      Cell("transformer_prune.md", TP_MINILM, row(small_shape="MiniLM-L6 (teacher)"), "BBC probe accuracy")]),
    (r"perplexity (\S+) \(first\) / (\S+) \(weight\) / (\S+) \(activation\), dense (\S+)\.",
     [Cell("transformer_prune.md", TP_SMOL, row(small_shape="30 layers, FFN 768", importance=imp), "perplexity",
           "{:,.0f}") for imp in ("first", "weight", "activation")]
     + [Cell("transformer_prune.md", TP_SMOL, row(small_shape="SmolLM2-135M (dense)"), "perplexity", "{:.1f}")]),
    (r"layers reaches perplexity (\S+) with `layer_id_map=\"auto\"`, against (\S+) for the first 14 \+ last 6 layers"
     r" and\s+(\S+) for evenly spaced layers",
     [depth(SMOL20, "auto", "perplexity", "{:.0f}"), depth(SMOL20, "first 14 + last 6", "perplexity", "{:.0f}"),
      depth(SMOL20, "evenly spaced", "perplexity", "{:,.0f}")]),
    (r"\(cosine to the teacher (\S+),\s+BBC probe (\S+)\) against the hand-picked 0, 2, 5 \((\S+), (\S+)\) and the "
     r"first three \((\S+), (\S+)\)",
     [depth(MINI3, "auto", "cosine to teacher"), depth(MINI3, "auto", "BBC probe accuracy"),
      depth(MINI3, "spread (0, 2, 5)", "cosine to teacher"), depth(MINI3, "spread (0, 2, 5)", "BBC probe accuracy"),
      depth(MINI3, "first 3 (0, 1, 2)", "cosine to teacher"),
      depth(MINI3, "first 3 (0, 1, 2)", "BBC probe accuracy")]),
    # slim
    (r"on an H200 with (\S+) training tokens per row:\s+slim \+ KD reaches held-out perplexity (\S+) \(the dense "
     r"teacher (\S+): (\S+)x\), first-N \+ KD (\S+), depth only \+ KD\s+(\S+), the same architecture from scratch "
     r"(\S+)\. On 2 CPU cores with (\S+) tokens slim \+ KD stops at (\S+)\.",
     [Text("slim_gpu.md", r"SmolLM2-135M at 50 % of its non-embedding parameters \([^)]*\), ([\d,]+) training")]
     + [slim_gpu(label) for label in ("slim + KD",)]
     + [Cell("slim_gpu.md", "Perplexity", row(row="dense (teacher)"), "no training"),
        Text("slim_gpu.md", r"slim \+ KD is (\S+)x the dense")]
     + [slim_gpu(label) for label in ("first-N + KD", "depth only + KD", "scratch (LM loss)")]
     + [Text("slim.md", r"At ([\d,]+) tokens: slim \+ KD is"), Text("slim.md", r"\| slim \+ KD .*\| +(\S+) \| 1\.00x")]),
    (r"distilled on ([\d,]+)\s+unlabelled Wikipedia texts on 2 CPU cores: held-out embedding cosine to the teacher "
     r"(\S+) \(first-N \+ KD (\S+),\s+the same architecture from random weights (\S+)\) and BBC News probe "
     r"accuracy (\S+) \(teacher (\S+), first-N \+ KD\s+(\S+), from random weights (\S+)\)\.",
     [Text("slim_minilm.md", r"([\d,]+) training texts per row")]
     + [minilm_row(label, "5,008 texts") for label in ("slim + KD", "first-N + KD", "scratch + KD")]
     + [minilm_row(label, "BBC probe accuracy")
        for label in ("slim + KD", "dense (teacher)", "first-N + KD", "scratch + KD")]),
    # distillation
    (r"with (\d+) labelled articles for the student \(the teacher's\s+classification head was trained on (\d+) "
     r"articles",
     [Text("distill.md", r"trained on (\d+) of those articles"),
      Text("distill.md", r"linear head trained on (\d+) articles")]),
    (r"reaches (\S+) test accuracy with logits \+ hidden-state distillation and (\S+) with logits alone,\s+against "
     r"(\S+) trained on the hard labels only \(teacher (\S+);",
     [Cell("distill.md", DISTILL, row(model=f"student: {label}"), "test accuracy (mean of 3 seeds)")
      for label in ("logits + hidden-state KD", "logits KD", "hard labels only")]
     + [Cell("distill.md", DISTILL, row(model="teacher: all-MiniLM-L6 + linear head"),
             "test accuracy (mean of 3 seeds)")]),
]


@pytest.mark.parametrize("pattern, cells", FIGURES, ids=[f"{i}:{p[:40]}" for i, (p, _) in enumerate(FIGURES)])
def test_readme_figure_equals_its_results_cell(pattern, cells):
    readme = " ".join((ROOT / "README.md").read_text().split())  # a re-wrapped paragraph says the same
    match = re.search(pattern, readme)
    assert match, f"the README no longer says: {pattern!r} (update FIGURES with the sentence)"
    assert len(match.groups()) == len(cells)
    for written, cell in zip(match.groups(), cells):
        assert written == cell.value(), f"README says {written} where {cell} holds {cell.value()}"
