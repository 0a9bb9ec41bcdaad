"""Plain-text tables of what a compression did."""


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_table(headers, rows):
    """A Markdown table (readable as plain text too) of ``rows`` under ``headers``."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(str(h))] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in cells:
        lines.append("| " + " | ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths)) + " |")
    return "\n".join(lines)


def _numeric(text):
    return text.replace(",", "").replace(".", "", 1).replace("-", "", 1).replace("%", "").replace("e", "").isdigit()


def human_count(value):
    """``1234567`` -> ``'1.23M'``."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return str(value)
