"""What ``slim_model`` returns, and how it is written: ``model/`` (``save_pretrained`` of the model and its
tokenizer), ``report.md`` with the candidate table and the dense -> pruned -> distilled figures, ``loss.png``,
``metrics.json``."""
import json
import os
from dataclasses import dataclass

from msmodelslim.utils.report import format_table, human_count


@dataclass
class SlimResult:
    model: object
    tokenizer: object
    architecture: object
    dense_architecture: object
    candidates: list
    metrics: dict
    history: dict
    config: dict
    projection: object = None  # an encoder narrower than its teacher: nn.Linear from its embeddings to the teacher's

    def save(self, directory):
        """Write the slim model, its tokenizer and the report into ``directory`` (created if needed; existing files
        of the same names are replaced), and ``projection.safetensors`` (``weight``, ``bias``: the student's
        embeddings mapped into the teacher's space) when there is a projection (else one left there by an earlier
        save is removed: it would not fit this model). Returns ``directory``."""
        os.makedirs(directory, exist_ok=True)
        self.model.save_pretrained(os.path.join(directory, "model"))
        projection_file = os.path.join(directory, "projection.safetensors")
        if self.projection is not None:
            from msmodelslim.utils.checkpoint import save_state_dict

            save_state_dict({k: v.detach() for k, v in self.projection.state_dict().items()}, projection_file)
        elif os.path.isfile(projection_file):
            os.remove(projection_file)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(os.path.join(directory, "model"))
        with open(os.path.join(directory, "metrics.json"), "w", encoding="utf-8") as handle:
            json.dump({"metrics": self.metrics, "architecture": self.architecture.to_dict(),
                       "dense_architecture": self.dense_architecture.to_dict(), "candidates": self.candidates,
                       "history": self.history, "config": self.config}, handle, indent=1)
        plotted = _plot(self.history, os.path.join(directory, "loss.png"))
        with open(os.path.join(directory, "report.md"), "w", encoding="utf-8") as handle:
            handle.write(report_markdown(self, plotted))
        return directory


def report_markdown(result, plotted=False):
    """The Markdown report of a :class:`SlimResult`."""
    m = result.metrics
    latency = m["budget_kind"] == "latency"
    size = (f"{m['slim_size']:,} of {m['dense_size']:,} microseconds per forward pass" if latency else
            f"{human_count(m['slim_size'])} of {human_count(m['dense_size'])} {m['budget_kind']}")
    lines = ["# slim report", "",
             f"Budget: {m['budget']} of the dense model's {m['budget_kind']}; chosen "
             f"**{result.architecture.label()}** (dense {result.dense_architecture.label()}): "
             f"{size} ({m['fraction']:.1%}); {human_count(m['slim_params'])} parameters in all.", "",
             format_table(["", m["metric"]], [["dense (teacher)", m["dense"]], ["pruned, no training", m["pruned"]],
                                              ["pruned + distillation", m["distilled"]]]), "",
             f"Distillation: {m['steps']} steps, {m['train_tokens']:,} tokens. CPU latency of one forward, slim / "
             f"dense: {m['latency_ratio']:.2f} (median of interleaved runs on the machine that ran it).", ""]
    if result.projection is not None:
        lines += [f"The slim model's {result.projection.in_features}-wide embeddings are compared with the teacher's "
                  f"{result.projection.out_features}-wide ones through a learned linear projection "
                  f"(projection.safetensors: `embedding @ weight.T + bias`); the embedding cosine above is measured "
                  f"through it.", ""]
    lines += ["## Candidates", "",
              "Proxy: " + ("mean KL(teacher || student) per held-out token" if m["objective"] == "lm" else
                           "1 - cosine of held-out sentence embeddings") + "; the best "
              f"{result.config['top_k']} by proxy get a short distillation and are ranked again.", ""]
    rows = [[r["label"] + (" (chosen)" if r.get("chosen") else ""), r["size"], f"{r['fraction']:.1%}", r["proxy"],
             r.get("proxy_after", "")] for r in result.candidates]
    kind = "latency (microseconds, measured)" if latency else m["budget_kind"]
    lines += [format_table(["architecture", kind, "of dense", "proxy", "proxy after short KD"], rows), ""]
    if plotted:
        lines += ["![training loss](loss.png)", ""]
    return "\n".join(lines)


def _plot(history, path):
    """Loss per step and the held-out metric; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(range(1, len(history["loss"]) + 1), history["loss"])
    axes[0].set(xlabel="step", ylabel="distillation loss", title="training")
    if history["evaluations"]:
        steps, values = zip(*history["evaluations"])
        axes[1].plot(steps, values, marker="o")
    axes[1].set(xlabel="step", ylabel="held-out metric", title="held-out")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
