"""slim_model end to end on tiny random models with a real tokenizer and the shipped Wikipedia text: the budget is
met, the result reloads with from_pretrained, distillation lowers the loss, and an interrupted run (SIGKILL, then
SIGINT) resumes to exactly the weights of an uninterrupted one."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from msmodelslim import assets
from msmodelslim.common.slim import SlimConfig, slim_model

SCRIPT = os.path.join(os.path.dirname(sys.executable), "msmodelslim")
# settings the command line can say too (the others keep their defaults in both)
LLAMA_ARGS = dict(budget=0.5, budget_kind="non_embedding_params", train_tokens=24 * 4 * 32, seq_len=32, batch_size=4,
                  align=16, max_candidates=3, top_k=2, checkpoint_every=3, learning_rate=1e-3)


def _cli_args(config):
    return ["--budget", str(config["budget"]), "--budget-kind", config["budget_kind"], "--train-tokens",
            str(config["train_tokens"]), "--seq-len", str(config["seq_len"]), "--batch-size",
            str(config["batch_size"]), "--align", str(config["align"]), "--max-candidates",
            str(config["max_candidates"]), "--top-k", str(config["top_k"]), "--checkpoint-every",
            str(config["checkpoint_every"]), "--lr", str(config["learning_rate"])]


@pytest.fixture(scope="module")
def tokenizer():
    return assets.minilm_tokenizer()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, initializer_range=0.1)  # peaked outputs: pruning costs
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_result(llama_dir, tmp_path_factory):
    checkpoints = tmp_path_factory.mktemp("run") / "checkpoints"
    result = slim_model(str(llama_dir), SlimConfig(**LLAMA_ARGS), data="wiki", checkpoint_dir=str(checkpoints))
    out = tmp_path_factory.mktemp("saved")
    result.save(str(out))
    return result, out


def test_llama_meets_the_budget_and_reloads(llama_result, llama_dir):
    result, out = llama_result
    metrics = result.metrics
    assert abs(metrics["fraction"] - 0.5) <= 0.02
    teacher = AutoModelForCausalLM.from_pretrained(llama_dir)
    non_embedding = sum(p.numel() for p in teacher.parameters()) - teacher.get_input_embeddings().weight.numel()
    assert metrics["dense_size"] == non_embedding
    reloaded = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    assert reloaded.config.num_hidden_layers == result.architecture.layers
    assert reloaded.config.intermediate_size == result.architecture.ffn
    ids = torch.randint(0, 1000, (2, 16))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, result.model.eval()(ids).logits)
    kept = sum(p.numel() for p in reloaded.parameters()) - reloaded.get_input_embeddings().weight.numel()
    assert kept == metrics["slim_size"]


def test_llama_distillation_lowers_the_loss_and_the_report_is_written(llama_result):
    result, out = llama_result
    loss = result.history["loss"]
    assert sum(loss[-4:]) / 4 < sum(loss[:4]) / 4
    assert result.metrics["distilled"] < result.metrics["pruned"]  # held-out perplexity
    report = (out / "report.md").read_text()
    assert result.architecture.label() + " (chosen)" in report and "proxy after short KD" in report
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["slim_size"] == result.metrics["slim_size"]
    assert len(saved["candidates"]) == LLAMA_ARGS["max_candidates"]
    assert sum("proxy_after" in row for row in saved["candidates"]) == LLAMA_ARGS["top_k"]
    assert (out / "loss.png").stat().st_size > 0


def _wait_for_step(path, at_least, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.stderr.read()
        if os.path.isfile(path):
            try:
                if torch.load(path, weights_only=True)["step"] >= at_least:
                    return
            except (EOFError, RuntimeError):  # never half-written: only the rename makes it visible
                raise
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of step {at_least} in {timeout} s")


def _start(llama_dir, out, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([SCRIPT, "slim", str(llama_dir), *_cli_args(LLAMA_ARGS), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_killed_then_interrupted_run_resumes_to_the_uninterrupted_weights(llama_result, llama_dir, tmp_path):
    result, reference = llama_result
    out = tmp_path / "slim"
    final = out / "checkpoints" / "final.pt"
    process = _start(llama_dir, out)
    _wait_for_step(final, 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert sorted(os.listdir(out)) == ["checkpoints"]  # no result, only the checkpoints

    process = _start(llama_dir, out, "--resume")
    _wait_for_step(final, 9, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted; nothing was written; checkpoints kept in" in stderr and "add --resume" in stderr
    stopped_at = torch.load(final, weights_only=True)["step"]
    assert 9 <= stopped_at < 24

    done = subprocess.run([SCRIPT, "slim", str(llama_dir), *_cli_args(LLAMA_ARGS), "--out", str(out), "--resume"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert not (out / "checkpoints").exists()
    resumed, uninterrupted = load_file(out / "model" / "model.safetensors"), load_file(
        reference / "model" / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_a_latency_budget_is_met_as_measured(llama_dir, tmp_path):
    """budget_kind="latency": candidates are predicted from a few timed models, then timed against the teacher;
    the slim model's forward pass, measured again at the end, is faster than the teacher's (how close it comes to
    half is a benchmark figure: one timing on a shared CPU is too noisy for a unit test)."""
    config = SlimConfig(**{**LLAMA_ARGS, "budget_kind": "latency", "tolerance": 0.1, "train_tokens": 4 * 4 * 32,
                           "top_k": 1})
    result = slim_model(str(llama_dir), config, data="wiki")
    metrics = result.metrics
    assert result.candidates and all(0 < row["fraction"] < 1 for row in result.candidates)
    assert 0 < metrics["fraction"] < 1, metrics["fraction"]
    assert metrics["slim_params"] < metrics["dense_params"] and 0 < metrics["slim_size"] < metrics["dense_size"]
    result.save(str(tmp_path))
    assert "microseconds per forward pass" in (tmp_path / "report.md").read_text()


def test_a_sequence_classifier_is_distilled_to_its_teachers_labels(tmp_path, tokenizer):
    """A BertForSequenceClassification directory: the class logits are distilled (the teacher labels the text),
    the head and the hidden size are kept, the distillation loss falls, and the result reloads as a classifier."""
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=64, num_labels=3))
    with torch.no_grad():
        teacher.classifier.weight.mul_(30)  # confident labels: something to distil
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    config = SlimConfig(budget=0.6, budget_kind="non_embedding_params", train_tokens=12 * 8 * 32, seq_len=32,
                        batch_size=8, align=16, max_candidates=2, top_k=1, learning_rate=1e-3, calib_samples=8,
                        eval_samples=16)
    result = slim_model(str(tmp_path / "teacher"), config, data="wiki")
    metrics, history = result.metrics, result.history
    assert metrics["objective"] == "classification" and abs(metrics["fraction"] - 0.6) <= 0.02
    assert metrics["dense"] == 1.0 and 0 <= metrics["pruned"] <= 1 and 0 <= metrics["distilled"] <= 1
    assert result.architecture.hidden == 64 and result.model.config.num_labels == 3
    assert sum(history["loss"][-3:]) < sum(history["loss"][:3]), history["loss"]
    result.save(str(tmp_path / "out"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "model").eval()
    ids = torch.randint(5, len(tokenizer), (2, 16))
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, result.model.eval()(input_ids=ids).logits, atol=1e-5)


def test_labels_join_the_distillation_of_a_classifier(tmp_path, tokenizer):
    """Labelled records: the labels' cross-entropy is added with label_weight, so a student trained towards a
    class the teacher hardly predicts ends up predicting it, and the metric is held-out accuracy."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=64, num_labels=3)).eval()
    texts = [text for text in assets.wiki_split()[0][:400] if text.strip()]
    with torch.no_grad():
        encoded = tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
        predicted = teacher(**encoded).logits.argmax(-1)
    rare = int(torch.bincount(predicted, minlength=3).argmin())  # the class the teacher predicts least
    records = [{"text": text, "label": rare} for text in texts]
    config = SlimConfig(budget=0.6, budget_kind="non_embedding_params", train_tokens=16 * 8 * 32, seq_len=32,
                        batch_size=8, align=16, max_candidates=2, top_k=1, learning_rate=5e-3, label_weight=0.9,
                        calib_samples=8, eval_samples=32)
    result = slim_model(teacher, config, data=records, tokenizer=tokenizer)
    metrics = result.metrics
    assert metrics["metric"] == "accuracy"
    assert metrics["dense"] == pytest.approx(float((predicted[::10][:32] == rare).float().mean()))
    assert metrics["distilled"] > metrics["dense"] + 0.5, metrics
    with pytest.raises(ValueError, match="label 3 is outside the model's 3 classes"):
        slim_model(teacher, config, data=records + [{"text": "one more", "label": 3}], tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"data\[1\] must be"):
        slim_model(teacher, config, data=[records[0], {"text": "no label"}] + records[2:], tokenizer=tokenizer)


def test_bert_embeddings_narrower_than_the_teacher_are_distilled_through_a_projection(tmp_path, tokenizer):
    """50 % of every parameter of a BERT whose token embedding is most of it: only a smaller hidden size meets the
    budget. The student's embeddings reach the teacher's space through a fitted, then trained, projection; the
    cosine reported is the one the saved projection gives."""
    from msmodelslim.utils.checkpoint import load_state_dict

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                        num_attention_heads=4, max_position_embeddings=64, initializer_range=0.1)
    teacher = BertModel(config).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    texts = assets.bbc_news()[0][:200]
    result = slim_model(teacher, SlimConfig(budget=0.5, budget_kind="params", train_tokens=12 * 8 * 32,
                                            seq_len=32, align=16, max_candidates=3, top_k=2, calib_samples=8,
                                            eval_samples=8, learning_rate=1e-3),
                        data=texts, tokenizer=tokenizer)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher is untouched
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert abs(result.metrics["fraction"] - 0.5) <= 0.02 and result.metrics["objective"] == "embedding"
    assert result.architecture.hidden < 64 and result.projection is not None
    assert result.metrics["pruned"] > 0.5  # the least-squares projection already lines the spaces up
    loss = result.history["loss"]
    assert sum(loss[-3:]) < sum(loss[:3]), loss  # student and projection learn together
    result.save(str(tmp_path))
    reloaded = AutoModel.from_pretrained(tmp_path / "model").eval()
    assert isinstance(reloaded, BertModel) and reloaded.config.hidden_size == result.architecture.hidden
    projection = load_state_dict(str(tmp_path / "projection.safetensors"))
    assert projection["weight"].shape == (64, result.architecture.hidden)
    held_out = texts[::10][:8]
    encoded = tokenizer(held_out, truncation=True, max_length=32, padding="max_length", return_tensors="pt")
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    with torch.no_grad():
        pooled = [(m(**encoded).last_hidden_state * mask).sum(1) / mask.sum(1) for m in (teacher.eval(), reloaded)]
    mapped = pooled[1] @ projection["weight"].T + projection["bias"]
    cosine = torch.nn.functional.cosine_similarity(pooled[0], mapped).mean().item()
    assert cosine == pytest.approx(result.metrics["distilled"], abs=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "opt", "qwen3"])
def test_other_families_meet_the_budget_and_reload_with_equal_outputs(name, tmp_path, tokenizer):
    import transformers

    vocab = len(tokenizer)
    configs = {
        "gpt2": lambda: transformers.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=4, n_head=4, n_positions=64),
        "opt": lambda: transformers.OPTConfig(vocab_size=vocab, hidden_size=64, ffn_dim=256, num_hidden_layers=4,
                                              num_attention_heads=4, max_position_embeddings=64,
                                              word_embed_proj_dim=64),
        "qwen3": lambda: transformers.Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                                  num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                                  head_dim=16, max_position_embeddings=64),
    }
    teacher = AutoModelForCausalLM.from_config(configs[name]())
    result = slim_model(teacher, SlimConfig(budget=0.5, budget_kind="non_embedding_params", train_tokens=4 * 4 * 32,
                                            seq_len=32, batch_size=4, align=16, max_candidates=4, top_k=1,
                                            calib_samples=4, eval_samples=4),
                        tokenizer=tokenizer)
    assert abs(result.metrics["fraction"] - 0.5) <= 0.02
    result.save(str(tmp_path))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    ids = torch.randint(0, 1000, (1, 12))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, result.model.eval()(ids).logits)


def test_bad_data_and_checkpoint_arguments_are_refused_before_any_work(llama_dir, tmp_path):
    with pytest.raises(TypeError, match="data must be 'wiki', a list of str or a list of .* records, not str"):
        slim_model(str(llama_dir), data="my-corpus.txt")
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        slim_model(str(llama_dir), resume=True)
    with pytest.raises(ValueError, match="holds no checkpoint of a slim run to resume"):
        slim_model(str(llama_dir), checkpoint_dir=str(tmp_path), resume=True)
    (tmp_path / "settings.json").write_text("{}")
    with pytest.raises(ValueError, match="holds the checkpoints of an earlier slim run"):
        slim_model(str(llama_dir), checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match="the checkpoints in .* were written with other settings"):
        slim_model(str(llama_dir), checkpoint_dir=str(tmp_path), resume=True)
    with pytest.raises(ValueError, match="seq_len 256 is longer than the 64 positions"):
        slim_model(str(llama_dir), data=["a text", "another text"])
    with pytest.raises(ValueError, match="needs at least 2"):
        slim_model(str(llama_dir), SlimConfig(seq_len=32), data=["only one text"])
    assert sorted(os.listdir(tmp_path)) == ["settings.json"]


DDP_ARGS = dict(budget=0.5, budget_kind="non_embedding_params", train_tokens=8 * 4 * 32, seq_len=32, batch_size=4,
                align=16, max_candidates=2, top_k=1, checkpoint_every=2, learning_rate=1e-3)


def test_the_command_line_under_two_gloo_processes_follows_the_single_process_run(llama_dir, tmp_path):
    """``torchrun --nproc_per_node 2 msmodelslim slim``: rank 0 alone checks, locks and writes --out, the other
    process trains beside it (DDP averages the gradients), and the result is the single-process one."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "out"
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", SCRIPT, "slim", str(llama_dir),
                           *_cli_args(DDP_ARGS), "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Written to") == 1  # one summary, from rank 0
    assert os.listdir(tmp_path) == ["out"]  # no lock, staging or checkpoint directory left behind
    assert "checkpoints" not in os.listdir(out)
    written = json.loads((out / "metrics.json").read_text())
    single = slim_model(str(llama_dir), SlimConfig(**DDP_ARGS))
    assert written["history"]["loss"] == pytest.approx(single.history["loss"], rel=1e-4)
    reloaded = AutoModelForCausalLM.from_pretrained(out / "model")
    for key, value in single.model.state_dict().items():
        assert torch.allclose(reloaded.state_dict()[key], value, atol=1e-4), key


class _StopAtFirstEvaluation(Exception):
    pass


def test_the_projection_of_a_narrower_student_trains_with_it_and_resumes_exactly(tmp_path, tokenizer):
    """The least-squares projection is the adaptor the distillation trains (its weights move), and it is part of
    the checkpoint: a run stopped after its step-2 checkpoint and resumed ends with the uninterrupted run's
    student and projection."""
    import copy

    from msmodelslim.common.slim import SlimConfig as Config
    from msmodelslim.pytorch.slim.checkpoints import Checkpoints
    from msmodelslim.pytorch.slim.data import padded_rows
    from msmodelslim.pytorch.slim.objective import EmbeddingObjective
    from msmodelslim.pytorch.slim.pipeline import _plan
    from msmodelslim.pytorch.slim.train import Distillation

    torch.manual_seed(0)
    shape = dict(vocab_size=len(tokenizer), intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=64)
    teacher = BertModel(BertConfig(hidden_size=64, **shape)).eval()
    initial = BertModel(BertConfig(hidden_size=32, **shape))
    texts = assets.bbc_news()[0][:40]
    rows, held_out = padded_rows(tokenizer, texts, 32, 32, "train"), padded_rows(tokenizer, texts[32:], 32, 8, "held")
    plan = _plan(Config(batch_size=4, learning_rate=1e-3, eval_every=4, checkpoint_every=2), 8)

    def run(folder, stop_at_first_evaluation=False, resume=False):
        student, objective = copy.deepcopy(initial), EmbeddingObjective()
        objective.prepare(teacher, student, [rows.select(range(8))])
        fitted = objective.projections[student].weight.clone()
        if stop_at_first_evaluation:
            def stop(*args):
                raise _StopAtFirstEvaluation()
            objective.metric = stop
        store = Checkpoints(str(folder), {"test": 1}, resume)
        torch.manual_seed(1)  # dropout: every run starts from the same random state, as slim_model's do
        Distillation(teacher, student, objective, plan, rows, held_out, checkpoint=(store, "final.pt")).run(resume)
        return student, objective.projections[student], fitted

    student, projection, fitted = run(tmp_path / "whole")
    assert not torch.equal(projection.weight, fitted)
    with pytest.raises(_StopAtFirstEvaluation):
        run(tmp_path / "stopped", stop_at_first_evaluation=True)
    resumed, resumed_projection, _ = run(tmp_path / "stopped", resume=True)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), resumed.state_dict().values()))
    assert torch.equal(projection.weight, resumed_projection.weight)
    assert torch.equal(projection.bias, resumed_projection.bias)


def test_hidden_state_losses_match_each_student_layer_to_the_teacher_layer_it_came_from(caplog, tokenizer):
    """hidden_weight > 0: one cosine loss per student layer against its source layer (an adaptor when the
    hidden sizes differ), in the short and in the final distillation; the training still converges."""
    import logging

    from msmodelslim.pytorch.slim import pipeline

    logger = logging.getLogger("msmodelslim")
    logger.addHandler(caplog.handler)
    built = []
    original = pipeline.Distillation.run

    def record(self, resume=False):
        built.append(dict(self.hidden[0]) if self.hidden else None)
        return original(self, resume)

    try:
        caplog.set_level(logging.INFO, logger="msmodelslim")
        pipeline.Distillation.run = record
        torch.manual_seed(0)
        teacher = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                               num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                               max_position_embeddings=64))
        result = slim_model(teacher, SlimConfig(budget=0.5, budget_kind="params", train_tokens=12 * 4 * 32,
                                                seq_len=32, batch_size=4, align=16, max_candidates=2, top_k=1,
                                                calib_samples=4, eval_samples=4, learning_rate=1e-3,
                                                hidden_weight=1.0), tokenizer=tokenizer)
    finally:
        pipeline.Distillation.run = original
        logger.removeHandler(caplog.handler)
    layers = result.architecture.layers
    assert len(built) == 2 and all(len(layer_map) == layers for layer_map in built[1:])
    assert all(0 <= source < 4 for source in built[-1].values())
    wrappers = [r.getMessage() for r in caplog.records if "Distillation model built" in r.getMessage()]
    assert wrappers[-1] == f"Distillation model built: {layers} intermediate and 1 output soft label(s)."
    loss = result.history["loss"]
    assert all(torch.isfinite(torch.tensor(loss))) and sum(loss[-3:]) < sum(loss[:3]), loss
    # the vocabulary matrices are most of the parameters: only a smaller hidden size meets the budget, so every
    # layer's loss went through an adaptor, which is not part of the model
    assert result.architecture.hidden < 64
    assert not any("adaptor" in name for name in result.model.state_dict())


def test_a_one_layer_qwen2_and_a_diverging_loss(tokenizer):
    """A one-layer teacher whose config lists a type per layer (the two-layer model that sizes it needs two), and a
    hidden_weight so large that the loss overflows: a clear ValueError before the step, not NaN weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    teacher = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                           max_position_embeddings=64))
    settings = dict(budget=0.9, budget_kind="non_embedding_params", train_tokens=4 * 4 * 32, seq_len=32, batch_size=4,
                    align=16, max_candidates=2, top_k=1, calib_samples=4, eval_samples=4)
    result = slim_model(teacher, SlimConfig(**settings), tokenizer=tokenizer)
    assert result.architecture.layers == 1 and abs(result.metrics["fraction"] - 0.9) <= 0.02
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    with pytest.raises(ValueError, match=r"the loss is (nan|inf) at step 1; lower the learning rate"):
        slim_model(teacher, SlimConfig(**settings, hidden_weight=1e40), tokenizer=tokenizer)


def test_saving_a_result_without_projection_removes_an_earlier_projection(tmp_path, tokenizer):
    from msmodelslim.common.slim.result import SlimResult
    from msmodelslim.common.slim.search import Architecture

    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2))
    arch = Architecture(1, 32, 2, 2, 64)
    metrics = dict(budget=0.5, budget_kind="params", slim_size=1, dense_size=2, fraction=0.5, slim_params=1,
                   metric="embedding cosine", dense=1.0, pruned=0.5, distilled=0.9, steps=1, train_tokens=1,
                   latency_ratio=0.5, objective="embedding")
    common = (model, tokenizer, arch, arch, [], metrics, {"loss": [], "evaluations": []}, {"top_k": 1})
    SlimResult(*common, projection=torch.nn.Linear(32, 64)).save(str(tmp_path))
    assert (tmp_path / "projection.safetensors").is_file()
    assert "through a learned linear projection" in (tmp_path / "report.md").read_text()
    SlimResult(*common).save(str(tmp_path))
    assert not (tmp_path / "projection.safetensors").exists()
