"""The benchmark report tooling: charts drawn from the result tables, and the README section they fill."""
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import plots  # noqa: E402
import run_all  # noqa: E402

SPARSE_TABLE = """# Sparse tool

## SmolLM2-135M

| setting | method    | perplexity | seconds |
|---------|-----------|------------|---------|
| dense   | -         |      15.66 | -       |
| 50%     | magnitude |      36.07 | 16      |
| 2:4     | hessian   |      error | boom    |

A note.
"""


@pytest.fixture
def results(tmp_path, monkeypatch):
    folder = tmp_path / "benchmarks" / "results"
    folder.mkdir(parents=True)
    monkeypatch.setattr(plots, "RESULTS", folder)
    monkeypatch.setattr(run_all, "HERE", tmp_path / "benchmarks")
    return folder


def test_read_tables_keeps_sections_headers_and_rows(results):
    (results / "sparse.md").write_text(SPARSE_TABLE)
    [(heading, headers, rows)] = plots.read_tables(results / "sparse.md")
    assert heading == "SmolLM2-135M"
    assert headers == ["setting", "method", "perplexity", "seconds"]
    assert rows[1] == ["50%", "magnitude", "36.07", "16"]
    assert len(rows) == 3


def test_draw_writes_a_png_per_chart_and_skips_missing_results(results):
    from PIL import Image

    (results / "sparse.md").write_text(SPARSE_TABLE)
    [path] = plots.draw("sparse")
    with Image.open(path) as image:
        image.verify()
    assert path.name == "sparse_perplexity.png"
    assert plots.draw("distill") == []


def test_readme_section_is_replaced_between_markers_only(results, tmp_path, monkeypatch):
    (results / "sparse.md").write_text(SPARSE_TABLE)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{run_all.START}\nstale\n{run_all.END}\noutro\n")
    monkeypatch.setattr(run_all, "README", readme)
    run_all.update_readme(redraw=["sparse"])
    text = readme.read_text()
    assert "stale" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert "### SmolLM2-135M" in text and "| 50%     | magnitude |" in text
    assert "![sparse_perplexity](benchmarks/results/sparse_perplexity.png)" in text


def test_readme_without_markers_is_left_alone(results, tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    monkeypatch.setattr(run_all, "README", readme)
    with pytest.raises(SystemExit, match="markers"):
        run_all.update_readme()
    assert readme.read_text() == "no markers here\n"


SLIM_TABLE = """# slim

## Perplexity

| row             | architecture | no training | 2,048 tokens | 4,096 tokens |
|-----------------|--------------|-------------|--------------|--------------|
| dense (teacher) | SmolLM2-135M | 20.1        |              |              |
| slim + KD       | L23          | 336.7       | 80.2         | 60.5         |
| scratch         | L23          | 50000       | 3000         | error        |
"""


def test_training_curves_are_drawn_from_the_token_columns(results, monkeypatch):
    (results / "slim.md").write_text(SLIM_TABLE)
    drawn = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.plot

    def record(self, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(args[0]), list(args[1])))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    [path] = plots.draw_curves("slim")
    assert path.name == "slim_perplexity.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn == [("slim + KD", [0.0, 2048.0, 4096.0], [336.7, 80.2, 60.5]),
                     ("scratch", [0.0, 2048.0], [50000.0, 3000.0])]
