"""Bar charts of the benchmark tables: reads benchmarks/results/<name>.md and writes <name>_<chart>.png beside it.

The charts are drawn from the Markdown tables themselves, so they always show what the tables say.
Run: python benchmarks/plots.py   (run_all.py calls it after the benchmarks)
"""
import math
import pathlib

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

# name -> [(chart, section heading prefix, label columns, value columns, x-axis title, log scale)]
CHARTS = {
    "prune": [
        ("latency", "CPU latency", ("model", "importance"), ("dense ms (batch 8)", "pruned ms"), "ms per batch of 8",
         False),
        ("importance", "Importance criteria", ("model", "importance"),
         ("accuracy / top-1 agreement before fine-tuning", "after 2 epochs"), "accuracy / top-1 agreement", False),
    ],
    "transformer_prune": [
        ("minilm", "MiniLM", ("small shape", "importance"), ("BBC probe accuracy",), "BBC probe accuracy", False),
        ("smollm2", "SmolLM2", ("small shape", "importance"), ("perplexity",), "perplexity (log scale)", True),
    ],
    "sparse": [
        ("perplexity", "SmolLM2", ("setting", "method"), ("perplexity",), "perplexity (log scale)", True),
    ],
    "distill": [
        ("accuracy", "BBC News", ("model",), ("test accuracy",), "test accuracy", False),
    ],
}


def read_tables(path):
    """``[(section heading, headers, rows)]`` of every Markdown table in ``path``."""
    tables, heading, lines = [], "", path.read_text().splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if line.startswith("## "):
            heading = line[3:]
        if line.startswith("|") and index + 1 < len(lines) and lines[index + 1].strip().startswith("|-"):
            headers = _cells(line)
            index += 2
            rows = []
            while index < len(lines) and lines[index].strip().startswith("|"):
                rows.append(_cells(lines[index]))
                index += 1
            tables.append((heading, headers, rows))
            continue
        index += 1
    return tables


def _cells(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _number(text):
    try:
        return float(text.rstrip("%"))
    except ValueError:
        return math.nan


def _column(headers, prefix):
    for position, header in enumerate(headers):
        if header.startswith(prefix):
            return position
    raise KeyError(f"no column starting with {prefix!r} in {headers}")


def draw(name):
    """Write the charts of ``results/<name>.md``; return the PNG paths written (none if the file is missing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source = RESULTS / f"{name}.md"
    if not source.exists():
        return []
    written = []
    tables = read_tables(source)
    for chart, section, label_columns, value_columns, axis_title, log in CHARTS[name]:
        found = [(headers, rows) for heading, headers, rows in tables if heading.startswith(section)]
        if not found:
            continue
        headers, rows = found[0]
        labels = [" / ".join(row[_column(headers, c)] for c in label_columns) for row in rows]
        series = [[_number(row[_column(headers, c)]) for row in rows] for c in value_columns]
        height = 0.8 / len(series)
        figure, axis = plt.subplots(figsize=(9, 0.35 * len(rows) * len(series) + 1.2))
        for offset, (column, values) in enumerate(zip(value_columns, series)):
            positions = [i + offset * height for i in range(len(rows))]
            axis.barh(positions, [0 if math.isnan(v) else v for v in values], height=height, label=column)
        axis.set_yticks([i + height * (len(series) - 1) / 2 for i in range(len(rows))], labels, fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel(axis_title)
        if log:
            axis.set_xscale("log")
        if len(series) > 1:
            axis.legend(fontsize=8)
        axis.set_title(f"{name}: {section}", fontsize=10)
        figure.tight_layout()
        path = RESULTS / f"{name}_{chart}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written


def main():
    for name in CHARTS:
        for path in draw(name):
            print(path)


if __name__ == "__main__":
    main()
