"""``msmodelslim slim``: each mistake is one line at the shell (exit 2) and nothing is written."""
import pytest
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from msmodelslim import assets
from msmodelslim.cli.main import main


def _save_tiny(folder, model_class, config_class, **extra):
    """A 2-layer model of ``model_class`` with the MiniLM tokenizer, saved as a Hugging Face directory."""
    tokenizer = assets.minilm_tokenizer()
    model_class(config_class(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, **extra)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("llama"), LlamaForCausalLM, LlamaConfig, num_key_value_heads=1,
                      max_position_embeddings=64)


def _run(capsys, *args):
    try:
        code = main(["slim", *map(str, args)])
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("budget", ["0", "1", "1.5", "-0.2", "half"])
def test_a_budget_outside_0_1_is_refused(capsys, tmp_path, tiny_llama, budget):
    code, lines = _run(capsys, tiny_llama, "--budget", budget, "--out", tmp_path / "out")
    assert code == 2 and len(lines) == 1 and "--budget" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_budget_no_architecture_meets_names_the_smallest_size(capsys, tmp_path, tiny_llama):
    code, lines = _run(capsys, tiny_llama, "--budget", "0.01", "--seq-len", "16", "--out", tmp_path / "out")
    assert code == 2, lines
    assert "below the smallest reachable architecture" in lines[-1] and "params" in lines[-1]
    assert not (tmp_path / "out").exists()


def test_an_unknown_architecture_lists_the_supported_ones(capsys, tmp_path):
    model = _save_tiny(tmp_path / "neox", GPTNeoXForCausalLM, GPTNeoXConfig)
    code, lines = _run(capsys, model, "--budget", "0.5", "--out", tmp_path / "out")
    assert code == 2
    assert "does not know the architecture 'gpt_neox'" in lines[-1] and "llama" in lines[-1]
    assert not (tmp_path / "out").exists()


def test_a_model_with_an_unsupported_task_head_is_refused_rather_than_stripped(capsys, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    model = _save_tiny(tmp_path / "masked-lm", BertForMaskedLM, BertConfig)
    code, lines = _run(capsys, model, "--budget", "0.5", "--out", tmp_path / "out")
    assert code == 2 and "is a BertForMaskedLM" in lines[-1] and "task heads" in lines[-1]
    assert not (tmp_path / "out").exists()


def test_empty_data_is_refused(capsys, tmp_path, tiny_llama):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    code, lines = _run(capsys, tiny_llama, "--budget", "0.5", "--data", empty, "--out", tmp_path / "out")
    assert code == 2 and lines == [f"msmodelslim slim: error: --data '{empty}' holds no text"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("lines, words", [
    (['{"text": "a", "label": 1}', '{"text": "b"}'], "line 2: every record or none must have a 'label'"),
    (['{"text": "a", "label": -1}'], "line 1: 'label' must be an integer >= 0"),
    (['{"text": "a", "label": 0}', '{"text": "b", "label": 1}'], "data with labels needs a sequence classifier"),
])
def test_labelled_data_is_checked(capsys, tmp_path, tiny_llama, lines, words):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    code, out = _run(capsys, tiny_llama, "--budget", "0.5", "--seq-len", "32", "--data", data, "--out",
                     tmp_path / "out")
    assert code == 2 and words in out[-1], out
    assert not (tmp_path / "out").exists()


def test_an_out_that_cannot_be_written_is_refused(capsys, tmp_path, tiny_llama):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    code, lines = _run(capsys, tiny_llama, "--budget", "0.5", "--out", blocker / "out")
    assert code == 2 and "--out" in lines[-1] and "cannot be created" in lines[-1]
    assert blocker.read_text() == "mine"


@pytest.mark.parametrize("option, value, words", [("--train-tokens", "0", "--train-tokens must be at least 1"),
                                                  ("--batch-size", "-1", "--batch-size must be at least 1"),
                                                  ("--lr", "0", "--lr must be positive"),
                                                  ("--hidden-weight", "-1", "--hidden-weight must be 0 or more")])
def test_bad_numbers_name_the_option(capsys, tmp_path, tiny_llama, option, value, words):
    code, lines = _run(capsys, tiny_llama, "--budget", "0.5", option, value, "--out", tmp_path / "out")
    assert code == 2 and len(lines) == 1 and words in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_sequence_longer_than_the_positions_is_refused(capsys, tmp_path, tiny_llama):
    code, lines = _run(capsys, tiny_llama, "--budget", "0.5", "--seq-len", "65", "--out", tmp_path / "out")
    assert code == 2 and "seq_len 65 is longer than the 64 positions" in lines[-1]
    assert not (tmp_path / "out").exists()


def test_resume_without_an_interrupted_run_is_refused(capsys, tmp_path, tiny_llama):
    code, lines = _run(capsys, tiny_llama, "--budget", "0.5", "--resume", "--out", tmp_path / "out")
    assert code == 2 and "holds no checkpoint of a slim run to resume" in lines[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_real_smollm2_gguf_is_slimmed_in_a_few_steps(capsys, tmp_path):
    """The command line on the shipped SmolLM2-135M GGUF file: a few steps of the whole pipeline on the real
    model, a result that reloads with from_pretrained and answers in the teacher's vocabulary."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assets.package_file(assets.SMOLLM2, ".gguf")
    out = tmp_path / "slim"
    code, lines = _run(capsys, gguf, "--budget", "0.5", "--budget-kind", "non_embedding_params", "--train-tokens",
                       "256", "--seq-len", "32", "--batch-size", "4", "--max-candidates", "2", "--top-k", "1",
                       "--out", out)
    assert code == 0, lines
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert abs(metrics["fraction"] - 0.5) <= 0.02 and metrics["steps"] == 2
    assert metrics["dense"] < 100 < metrics["pruned"]  # the real teacher's perplexity; a half model's, untrained
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.num_hidden_layers <= 30 and model.config.vocab_size == 49152
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    assert not (out / "checkpoints").exists()


def test_a_txt_file_without_blank_lines_holds_one_text_per_line(tmp_path):
    from msmodelslim.cli.common import calibration_texts

    lines, paragraphs = tmp_path / "lines.txt", tmp_path / "paragraphs.txt"
    lines.write_text("first text\nsecond text\n\nthird\n".replace("\n\n", "\n"))
    paragraphs.write_text("first text\nstill the first\n\nsecond text\n")
    assert calibration_texts(str(lines), "--data") == ["first text", "second text", "third"]
    assert calibration_texts(str(paragraphs), "--data") == ["first text\nstill the first", "second text\n"]
