"""Bar charts (and, for training curves, line charts) of the benchmark tables: reads benchmarks/results/<name>.md and writes <name>_<chart>.png beside it.

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

# name -> [(chart, section heading prefix, label column, first value column, y-axis title)]: one line per row, the
# value columns ("N tokens") on the x axis
CURVES = {
    "slim": [("perplexity", "Perplexity", "row", "no training", "held-out perplexity (log scale)")],
    "slim_gpu": [("perplexity", "Perplexity", "row", "no training", "held-out perplexity (log scale)")],
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
        return float(text.split(" (")[0].rstrip("%"))  # a median followed by its (min-max)
    except ValueError:
        return math.nan


def _column(headers, prefix):
    for position, header in enumerate(headers):
        if header.startswith(prefix):
            return position
    raise KeyError(f"no column starting with {prefix!r} in {headers}")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _section(tables, section):
    """``(headers, rows)`` of the first table under a heading starting with ``section``, or None."""
    return next(((headers, rows) for heading, headers, rows in tables if heading.startswith(section)), None)


def _save(plt, figure, axis, title, path):
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def draw(name):
    """Write the charts of ``results/<name>.md``; return the PNG paths written (none if the file is missing)."""
    source = RESULTS / f"{name}.md"
    if not source.exists():
        return []
    plt, written, tables = _pyplot(), [], read_tables(source)
    for chart, section, label_columns, value_columns, axis_title, log in CHARTS[name]:
        found = _section(tables, section)
        if not found:
            continue
        headers, rows = found
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
        written.append(_save(plt, figure, axis, f"{name}: {section}", RESULTS / f"{name}_{chart}.png"))
    return written


def draw_curves(name):
    """Write the line charts of ``results/<name>.md``; return the PNG paths written."""
    source = RESULTS / f"{name}.md"
    if not source.exists():
        return []
    plt, written, tables = _pyplot(), [], read_tables(source)
    for chart, section, label_column, first_column, axis_title in CURVES[name]:
        found = _section(tables, section)
        if not found:
            continue
        headers, rows = found
        start = _column(headers, first_column)
        points = [0.0] + [_number(h.split(" ")[0].replace(",", "")) for h in headers[start + 1:]]
        figure, axis = plt.subplots(figsize=(8, 4.5))
        for row in rows:
            values = [_number(cell) for cell in row[start:]]
            line = [(x, y) for x, y in zip(points, values) if not math.isnan(y)]
            if len(line) > 1:
                axis.plot(*zip(*line), marker="o", label=row[_column(headers, label_column)])
            elif line:
                axis.axhline(line[0][1], linestyle="--", color="gray", label=row[_column(headers, label_column)])
        axis.set_yscale("log")
        axis.set_xlabel("training tokens")
        axis.set_ylabel(axis_title)
        axis.legend(fontsize=8)
        written.append(_save(plt, figure, axis, f"{name}: {section}", RESULTS / f"{name}_{chart}.png"))
    return written


def main():
    for name in CURVES:
        for path in draw_curves(name):
            print(path)
    for name in CHARTS:
        for path in draw(name):
            print(path)


if __name__ == "__main__":
    main()
