"""Rows S01-S35, T01-T23 and P01-P20 of the bad-input sweep: every user mistake exits 2 with one line naming the
argument, no code from a file ever runs, and nothing is written when a run fails."""
import json
import os
import pickle
import shutil

import pytest
import torch
from zoo.cli_runner import FAST, run_cli

MARKER_DIR = "code-ran"


class Payload:
    """A pickle that runs ``os.mkdir(marker)`` when loaded unsafely."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _one_line(run, rc=2, *words):
    assert run.rc == rc, run.stderr
    errors = [line for line in run.error_lines if line.startswith("msmodelslim")]
    assert len(errors) == 1 and run.error_lines[-1] == errors[0], run.stderr
    for word in words:
        assert word in errors[0], run.stderr
    return errors[0]


def _model_copy(fx, tmp_path, name="model"):
    return shutil.copytree(fx / "tiny", tmp_path / name)


def _damage_weights(folder, how):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    damaged = {"S04-truncated": data[: len(data) // 2], "S05-random": os.urandom(4096),
               "S06-header-not-json": (16).to_bytes(8, "little") + b"{not json here!}" + data[24:],
               "S07-zero-bytes": b""}[how]
    path.write_bytes(damaged)


# --- msmodelslim sparse -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["S04-truncated", "S05-random", "S06-header-not-json", "S07-zero-bytes"])
def test_sparse_refuses_damaged_weights(fx, tmp_path, how):
    model = _model_copy(fx, tmp_path)
    _damage_weights(model, how)
    # the damaged file itself is named
    _one_line(run_cli("sparse", model, "--out", tmp_path / "out", *FAST), 2, "MODEL", str(model / "model.safetensors"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setup, words", [
    pytest.param("missing", ["does not exist"], id="S01"),
    pytest.param("no-weights", ["holds no weights"], id="S02"),
    pytest.param("empty-dir", ["config.json"], id="S03"),
    pytest.param("text-gguf", ["GGUF"], id="S08"),
    pytest.param("random-gguf", ["GGUF"], id="S09"),
    pytest.param("txt-file", ["MODEL"], id="S10"),
])
def test_sparse_refuses_what_is_not_a_model(fx, tmp_path, setup, words):
    target = tmp_path / "m"
    if setup == "no-weights":
        shutil.copytree(fx / "tiny", target, ignore=shutil.ignore_patterns("*.safetensors"))
    elif setup == "empty-dir":
        target.mkdir()
    elif setup in ("text-gguf", "random-gguf"):
        target = tmp_path / "m.gguf"
        target.write_bytes(b"hello\n" if setup == "text-gguf" else b"GGUF" + os.urandom(4096))
    elif setup == "txt-file":
        target = tmp_path / "m.txt"
        target.write_text("weights?")
    _one_line(run_cli("sparse", target, "--out", tmp_path / "out", *FAST), 2, *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, words", [
    *[pytest.param(["--ratio", v], ["--ratio"], id=f"S11-{v}") for v in ("0", "1", "1.5", "abc", "nan")],
    *[pytest.param(["--pattern", v], ["pattern"], id=f"S12-{v}") for v in ("4:2", "2:0", "x", "1:1")],
    pytest.param(["--pattern", "2:4", "--owl"], ["OWL"], id="S13"),
    pytest.param(["--method", "bogus"], ["--method"], id="S14"),
    pytest.param(["--calib", "/no/such/file.txt"], ["does not exist"], id="S15"),
    pytest.param(["--calib", "data.csv"], ["--calib"], id="S23"),
    *[pytest.param([flag, v], [flag], id=f"S25{flag}={v}")
      for flag, v in (("--seq-len", "0"), ("--samples", "0"), ("--samples", "-3"), ("--eval-samples", "0"))],
    pytest.param(["--seq-len", "abc"], ["--seq-len"], id="S26"),
])
def test_sparse_refuses_bad_options_before_any_work(fx, tmp_path, args, words):
    run = run_cli("sparse", fx / "tiny", "--out", tmp_path / "out", *FAST, *args)
    _one_line(run, 2, *words)
    assert len(run.error_lines) == 1 and os.listdir(tmp_path) == []


@pytest.mark.parametrize("name, content, words", [
    pytest.param("empty.txt", b"", ["0 tokens", "--samples"], id="S16-empty"),
    pytest.param("blank.txt", b"  \n\n \n", ["0 tokens"], id="S16-whitespace"),
    pytest.param("empty.jsonl", b"", ["0 tokens"], id="S16-empty-jsonl"),
    pytest.param("short.txt", b"ten tokens or so of text here.", ["tokens"], id="S16-short"),
    pytest.param("binary.txt", bytes(range(128, 256)) * 80, ["not UTF-8", "line 1"], id="S17"),
    pytest.param("middle.txt", b"fine text\n" * 600 + b"\xb3\xff" + b"more\n", ["not UTF-8", "line 601"], id="S18"),
    pytest.param("bad.jsonl", b'{"text": "ok"}\n{"text": "\xb3"}\n', ["not UTF-8", "line 2"], id="S19"),
    pytest.param("field.jsonl", b'{"body": "x"}\n', ["line 1", "'text'"], id="S20-field"),
    pytest.param("notjson.jsonl", b"hello\n", ["line 1"], id="S20-not-json"),
    pytest.param("list.jsonl", b'["a"]\n', ["line 1"], id="S20-list"),
    pytest.param("int.jsonl", b'{"text": "ok"}\n{"text": 123}\n', ["int.jsonl", "line 2"], id="S21"),
    pytest.param("null.jsonl", b'{"text": null}\n', ["null.jsonl", "line 1"], id="S22"),
])
def test_sparse_refuses_bad_calibration_files_naming_file_and_line(fx, tmp_path, name, content, words):
    calib = tmp_path / name
    calib.write_bytes(content)
    _one_line(run_cli("sparse", fx / "tiny", "--calib", calib, "--out", tmp_path / "out", *FAST), 2, *words)
    assert not (tmp_path / "out").exists()


def test_sparse_refuses_a_calibration_directory(fx, tmp_path):
    """S24."""
    (tmp_path / "adir.txt").mkdir()
    _one_line(run_cli("sparse", fx / "tiny", "--calib", tmp_path / "adir.txt", "--out", tmp_path / "out", *FAST),
              2, "not a regular file")


def test_sparse_refuses_an_impossible_sequence_length_quickly(fx, tmp_path):
    """S27."""
    _one_line(run_cli("sparse", fx / "tiny", "--seq-len", "1000000000", "--samples", "1", "--out", tmp_path / "o"),
              2, "--seq-len")


@pytest.mark.parametrize("args", [
    pytest.param(["sparse", "m"], id="S28-no-out"),
    pytest.param(["sparse", "m", "--out", "o", "--bogus"], id="S28-unknown-flag"),
    pytest.param([], id="S28-no-command"),
])
def test_incomplete_command_lines_exit_2(args):
    assert run_cli(*args).rc == 2


@pytest.mark.parametrize("where", ["S29-config", "S30-tokenizer-config"])
def test_a_model_asking_for_remote_code_is_refused_without_a_prompt(fx, tmp_path, where):
    model = _model_copy(fx, tmp_path)
    marker = tmp_path / MARKER_DIR
    (model / "evil.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    name = "config.json" if where == "S29-config" else "tokenizer_config.json"
    config = json.loads((model / name).read_text())
    config["auto_map"] = {"AutoConfig": "evil.Config", "AutoModelForCausalLM": "evil.Model",
                          "AutoTokenizer": ["evil.Tokenizer", None]}
    (model / name).write_text(json.dumps(config))
    run = run_cli("sparse", model, "--out", tmp_path / "out", *FAST)
    _one_line(run, 2, "MODEL")
    assert not marker.exists() and "[y/N]" not in run.stdout


def test_a_code_running_pytorch_bin_is_refused(fx, tmp_path):
    """S31."""
    model = _model_copy(fx, tmp_path)
    (model / "model.safetensors").unlink()
    marker = tmp_path / MARKER_DIR
    torch.save({"model.embed_tokens.weight": Payload(str(marker))}, model / "pytorch_model.bin")
    _one_line(run_cli("sparse", model, "--out", tmp_path / "out", *FAST), 2, "MODEL")
    assert not marker.exists()


def test_an_nm_pattern_wider_than_every_row_is_refused(fx, tmp_path):
    """S32."""
    _one_line(run_cli("sparse", fx / "tiny", "--pattern", "2:4096", "--out", tmp_path / "out", *FAST), 2,
              "2:4096", "128")
    assert not (tmp_path / "out").exists()


def test_an_nm_pattern_that_does_not_divide_rows_works(fx, tmp_path):
    """S33."""
    run = run_cli("sparse", fx / "tiny", "--pattern", "3:7", "--out", tmp_path / "out", *FAST)
    assert run.rc == 0, run.stderr
    assert "overall sparsity" in (tmp_path / "out" / "report.md").read_text()


def test_an_encoder_is_refused_by_sparse_instead_of_saved_with_a_random_head(tmp_path):
    """S34."""
    from msmodelslim import assets

    _one_line(run_cli("sparse", assets.minilm_l6_dir(), "--out", tmp_path / "out", *FAST), 2,
              "not a causal language model")
    assert not (tmp_path / "out").exists()


def test_verbose_shows_the_traceback(tmp_path):
    """S35."""
    run = run_cli("--verbose", "sparse", tmp_path / "nope", "--out", tmp_path / "out")
    assert run.rc == 2 and "Traceback" in run.stderr


# --- msmodelslim prune-transformer --------------------------------------------------------------------------------

def _prune_transformer(fx, tmp_path, weights=None, *args):
    return run_cli("prune-transformer", weights or fx / "big4", "--small-config", fx / "small_config.json",
                   "--out", tmp_path / "out", *args)


@pytest.mark.parametrize("args, words", [
    pytest.param(["--layer-map", "0:a"], ["--layer-map"], id="T01"),
    pytest.param(["--layer-map", "0:99,1:3"], ["--layer-map", "[99]"], id="T02"),
    pytest.param(["--layer-map", "0:0,0:3"], ["--layer-map", "twice"], id="T03"),
    pytest.param(["--layer-map", "0:0,1:3,1:2"], ["--layer-map", "twice"], id="T04"),
    pytest.param(["--layer-map", "0:0,1:3,5:2"], ["--layer-map", "[5]"], id="T05"),
    pytest.param(["--layer-map", "-1:0"], ["--layer-map"], id="T06-negative"),
    pytest.param(["--layer-map=-1:0,1:3"], ["--layer-map"], id="T06-equals"),
    pytest.param(["--layer-map", "0:0,,1:3"], ["--layer-map"], id="T06-empty-pair"),
    pytest.param(["--layer-map", "0:0,1:3", "--steps", "prune_blocks,bogus"], ["--steps"], id="T12"),
    pytest.param(["--layer-map", "0:0,1:3", "--pattern", r"model.layers.((\d+)"], ["pattern"], id="T13-bad-regex"),
    pytest.param(["--layer-map", "0:0,1:3", "--pattern", "model.layers"], ["group"], id="T13-no-group"),
    pytest.param(["--layer-map", "0:0,1:3", "--importance", "activation", "--calib-samples", "0"],
                 ["--calib-samples"], id="T14-activation"),
    pytest.param(["--layer-map", "auto", "--calib-samples", "0"], ["--calib-samples"], id="T14-auto"),
    pytest.param(["--layer-map", "0:0,1:3", "--importance", "activation", "--calib-samples", "-1"],
                 ["--calib-samples"], id="T15"),
])
def test_prune_transformer_refuses_bad_options(fx, tmp_path, args, words):
    _one_line(_prune_transformer(fx, tmp_path, None, *args), 2, *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, words", [
    pytest.param("{not json", ["--small-config"], id="T07-not-json"),
    pytest.param('{"hidden_size": 64}', ["--small-config"], id="T07-no-model-type"),
])
def test_prune_transformer_refuses_a_bad_small_config(fx, tmp_path, content, words):
    config = tmp_path / "small.json"
    config.write_text(content)
    run = run_cli("prune-transformer", fx / "big4", "--small-config", config, "--layer-map", "0:0,1:3",
                  "--out", tmp_path / "out")
    _one_line(run, 2, *words)


def test_prune_transformer_refuses_a_small_config_asking_for_remote_code(fx, tmp_path):
    """T08."""
    marker = tmp_path / MARKER_DIR
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "evil.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    config = json.loads((fx / "small_config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.Config"}
    (folder / "config.json").write_text(json.dumps(config))
    run = run_cli("prune-transformer", fx / "big4", "--small-config", folder, "--layer-map", "0:0,1:3",
                  "--out", tmp_path / "out")
    _one_line(run, 2, "--small-config")
    assert not marker.exists() and "[y/N]" not in run.stdout


def _evil_checkpoint(path, marker, kind):
    payload = {"model.embed_tokens.weight": Payload(str(marker))}
    if kind == "zip":
        torch.save(payload, path)
    elif kind == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)


@pytest.mark.parametrize("name, kind", [
    pytest.param("w.pt", "zip", id="T09-zip"), pytest.param("w.pt", "legacy", id="T09-legacy"),
    pytest.param("w.pkl", "plain", id="T10-pkl"), pytest.param("w.bin", "plain", id="T10-bin"),
])
def test_prune_transformer_refuses_code_running_checkpoints(fx, tmp_path, name, kind):
    marker = tmp_path / MARKER_DIR
    _evil_checkpoint(tmp_path / name, marker, kind)
    _one_line(_prune_transformer(fx, tmp_path, tmp_path / name, "--layer-map", "0:0,1:3"), 2, name)
    assert not marker.exists()


@pytest.mark.parametrize("importance", ["first", "activation"])
def test_prune_transformer_refuses_a_directory_with_a_code_running_bin(fx, tmp_path, importance):
    """T11."""
    big = shutil.copytree(fx / "big4", tmp_path / "big")
    (big / "model.safetensors").unlink()
    marker = tmp_path / MARKER_DIR
    _evil_checkpoint(big / "pytorch_model.bin", marker, "zip")
    _one_line(_prune_transformer(fx, tmp_path, big, "--layer-map", "0:0,1:3", "--importance", importance), 2)
    assert not marker.exists()


@pytest.mark.parametrize("name", [
    pytest.param("big 4", id="T16-space"),
    pytest.param("модель", id="T17-non-ascii"),
])
def test_prune_transformer_accepts_any_existing_path(fx, tmp_path, name):
    big = shutil.copytree(fx / "big4", tmp_path / name)
    run = _prune_transformer(fx, tmp_path, big, "--layer-map", "0:0,1:3")
    assert run.rc == 0, run.stderr
    assert json.loads((tmp_path / "out" / "prune_report.json").read_text())["kept"]["layers"] == {"0": 0, "1": 3}


def test_prune_transformer_follows_a_symlinked_checkpoint(fx, tmp_path):
    """T18."""
    os.symlink(fx / "big4" / "model.safetensors", tmp_path / "link.safetensors")
    assert _prune_transformer(fx, tmp_path, tmp_path / "link.safetensors", "--layer-map", "0:0,1:3").rc == 0


def test_prune_transformer_refuses_a_group_writable_checkpoint(fx, tmp_path):
    """T19."""
    weights = tmp_path / "w.safetensors"
    shutil.copy(fx / "big4" / "model.safetensors", weights)
    os.chmod(weights, 0o664)
    _one_line(_prune_transformer(fx, tmp_path, weights, "--layer-map", "0:0,1:3"), 2, "writable")


@pytest.mark.parametrize("case", ["T20-truncated", "T23-empty-pt", "T21-too-few-layers", "T22-other-family"])
def test_prune_transformer_refuses_checkpoints_that_cannot_fill_the_model(fx, tmp_path, case):
    args = ["--layer-map", "0:0,1:3"]
    if case == "T20-truncated":
        weights = tmp_path / "w.safetensors"
        weights.write_bytes((fx / "big4" / "model.safetensors").read_bytes()[:5000])
    elif case == "T23-empty-pt":
        weights = tmp_path / "empty.pt"
        weights.write_bytes(b"")
    elif case == "T21-too-few-layers":
        weights = fx / "tiny"
    else:
        from msmodelslim import assets

        weights = assets.minilm_l6_dir()
    run = _prune_transformer(fx, tmp_path, weights, *args)
    _one_line(run, 2)
    assert not (tmp_path / "out").exists()


# --- msmodelslim prune --------------------------------------------------------------------------------------------

FACTORIES = '''
import torch.nn as nn
def cnn():
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
def returns_str():
    return "model"
def explodes():
    raise RuntimeError("factory exploded")
def needs_arg(x):
    return cnn()
not_callable = 3
'''


@pytest.fixture
def factories(tmp_path):
    """A user's folder with ``sweepfactories.py``, not on PYTHONPATH."""
    (tmp_path / "sweepfactories.py").write_text(FACTORIES)
    return tmp_path


def _prune(folder, factory="sweepfactories:cnn", shape="1,3,16,16", *args):
    return run_cli("prune", factory, "--input-shape", shape, "--ratio", "0.5", "--out", folder / "out", *args,
                   cwd=folder)


@pytest.mark.parametrize("factory, rc, words", [
    pytest.param("no_such_mod:f", 2, ["no_such_mod"], id="P01"),
    pytest.param("sweepfactories:returns_str", 2, ["str"], id="P02"),
    pytest.param("sweepfactories:explodes", 1, ["factory exploded"], id="P03"),
    pytest.param("sweepfactories:needs_arg", 2, ["needs_arg"], id="P04"),
    pytest.param("sweepfactories:not_callable", 2, ["not_callable"], id="P05"),
    pytest.param("sweepfactories", 2, ["FACTORY"], id="P06"),
])
def test_prune_factory_mistakes(factories, factory, rc, words):
    _one_line(_prune(factories, factory), rc, *words)
    assert not (factories / "out").exists()


def test_prune_finds_a_factory_in_the_current_directory(factories):
    """P07: as ``python -m`` would."""
    run = _prune(factories)
    assert run.rc == 0, run.stderr
    assert (factories / "out" / "desc.json").exists()


@pytest.mark.parametrize("shape, extra, words", [
    pytest.param("a,b", [], ["--input-shape"], id="P08-letters"),
    pytest.param("", [], ["--input-shape"], id="P08-empty"),
    pytest.param("-1,3,16,16", [], ["--input-shape"], id="P09"),
    pytest.param("1,5,16,16", [], ["--input-shape"], id="P10"),
    pytest.param("0,3,16,16", ["--importance", "activation"], ["activation"], id="P12"),
    pytest.param("1,3,100000,100000", [], ["--input-shape"], id="P13"),
    pytest.param("1,3,16,16", ["--align", "0"], ["align"], id="P19-zero"),
    pytest.param("1,3,16,16", ["--align", "-16"], ["align"], id="P19-negative"),
])
def test_prune_refuses_bad_shapes_and_options(factories, shape, extra, words):
    run = run_cli("prune", "sweepfactories:cnn", f"--input-shape={shape}", "--ratio", "0.5",
                  "--out", factories / "out", *extra, cwd=factories)
    _one_line(run, 2, *words)
    assert not (factories / "out").exists()


def test_prune_with_an_empty_batch_and_l1_works(factories):
    """P11."""
    assert _prune(factories, "sweepfactories:cnn", "0,3,16,16").rc == 0


def _cnn_state(**changes):
    import importlib

    state = importlib.import_module("sweepfactories").cnn().state_dict()
    state.update(changes)
    return state


@pytest.mark.parametrize("case, words", [
    pytest.param("P14-zip", ["refused"], id="P14-zip"),
    pytest.param("P14-legacy", ["refused"], id="P14-legacy"),
    pytest.param("P14-pkl", ["--weights"], id="P14-pkl"),
    pytest.param("P15-wrong-keys", ["--weights", "missing"], id="P15"),
    pytest.param("P16-wrong-shape", ["--weights", "wrong shape", "0.weight"], id="P16"),
    pytest.param("P17-text", ["--weights"], id="P17-text"),
    pytest.param("P17-empty-dir", ["holds no weights"], id="P17-empty-dir"),
    pytest.param("P18-empty-pt", ["--weights"], id="P18"),
])
def test_prune_refuses_weights_that_do_not_fit_or_are_unsafe(factories, case, words):
    from safetensors.torch import save_file

    marker = factories / MARKER_DIR
    weights = factories / "w.pt"
    if case.startswith("P14"):
        kind = case.split("-")[1]
        weights = factories / ("w.pkl" if kind == "pkl" else "w.pt")
        _evil_checkpoint(weights, marker, {"zip": "zip", "legacy": "legacy", "pkl": "plain"}[kind])
    elif case.startswith("P15"):
        weights = factories / "w.safetensors"
        import sys

        sys.path.insert(0, str(factories))
        save_file({"conv.weight": torch.zeros(32, 3, 3, 3)}, weights)
    elif case.startswith("P16"):
        weights = factories / "w.safetensors"
        import sys

        sys.path.insert(0, str(factories))
        save_file({k: v.contiguous() for k, v in _cnn_state(**{"0.weight": torch.zeros(16, 3, 3, 3)}).items()},
                  weights)
    elif case == "P17-text":
        weights = factories / "w.txt"
        weights.write_text("not weights")
    elif case == "P17-empty-dir":
        weights = factories / "wdir"
        weights.mkdir()
    else:
        weights.write_bytes(b"")
    _one_line(_prune(factories, "sweepfactories:cnn", "1,3,16,16", "--weights", weights), 2, *words)
    assert not marker.exists() and not (factories / "out").exists()


def test_prune_to_a_tiny_ratio_prunes_as_far_as_allowed(factories):
    """P20."""
    run = run_cli("prune", "sweepfactories:cnn", "--input-shape", "1,3,16,16", "--ratio", "0.01",
                  "--out", factories / "out", cwd=factories)
    assert run.rc == 0, run.stderr


# --- found by trying the command line as a stranger, after the sweep ----------------------------------------------

@pytest.mark.parametrize("content, words", [
    pytest.param(b'{"text": "\\ud800 x"}\n', ["line 1"], id="lone-surrogate"),
])
def test_calibration_text_no_tokenizer_can_take_is_refused(fx, tmp_path, content, words):
    calib = tmp_path / "c.jsonl"
    calib.write_bytes(content)
    _one_line(run_cli("sparse", fx / "tiny", "--calib", calib, "--out", tmp_path / "out", *FAST), 2, *words)


def test_a_jsonl_file_with_a_byte_order_mark_is_read(fx, tmp_path):
    calib = tmp_path / "bom.jsonl"
    calib.write_bytes(b"\xef\xbb\xbf" + b"\n".join(b'{"text": "Calibration sentence number %d about models."}' % i
                                                    for i in range(60)))
    run = run_cli("sparse", fx / "tiny", "--calib", calib, "--out", tmp_path / "out", *FAST)
    assert run.rc == 0, run.stderr


@pytest.mark.parametrize("args, words", [
    pytest.param(["--seq-len", "1"], ["--seq-len"], id="seq-len-1"),
    pytest.param(["--eval-samples", "100000"], ["--eval-samples"], id="eval-samples-too-many"),
])
def test_sparse_counts_that_cannot_work_are_refused(fx, tmp_path, args, words):
    run = run_cli("sparse", fx / "tiny", "--out", tmp_path / "out", *FAST, *args)
    _one_line(run, 2, *words)


def test_prune_transformer_names_the_option_or_input_at_fault(fx, tmp_path):
    run = _prune_transformer(fx, tmp_path, None, "--layer-map", "0:99,1:3")
    _one_line(run, 2, "--layer-map", "[99]")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _one_line(_prune_transformer(fx, tmp_path, empty, "--steps", "prune_bert_intra_block"), 2, "WEIGHTS")
    config = json.loads((fx / "small_config.json").read_text())
    config["num_attention_heads"] = 5  # does not divide hidden 64
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(config))
    run = run_cli("prune-transformer", fx / "big4", "--small-config", bad, "--layer-map", "0:0,1:3",
                  "--out", tmp_path / "out")
    _one_line(run, 2, "--small-config")


@pytest.mark.parametrize("factory, shape, words", [
    pytest.param("../sweepfactories:cnn", "1,3,16,16", ["FACTORY"], id="relative-module"),
    pytest.param("os.path:join", "1,3,16,16", ["without arguments"], id="needs-arguments"),
    pytest.param("sweepfactories:cnn", "99999999999999999999,3,16,16", ["--input-shape"], id="huge-shape"),
])
def test_prune_mistakes_name_the_argument(factories, factory, shape, words):
    run = run_cli("prune", factory, f"--input-shape={shape}", "--ratio", "0.5", "--out", factories / "out",
                  cwd=factories)
    line = _one_line(run, 2, *words)
    assert len(line) < 600
