"""What the slim model is distilled to match, and how it is scored.

* ``lm`` (causal language models): forward KL between the teacher's and the student's next-token distributions
  at a temperature (KDKLDiv); proxy: the mean KL at T=1 on held-out tokens; metric: held-out perplexity.
* ``embedding`` (encoders): 1 - cosine between the teacher's and the student's last hidden states at every
  unpadded token (HiddenCosine); proxy: 1 - cosine of the mean-pooled sentence embeddings; metric: that cosine.
  A student of a smaller hidden size is compared through a linear projection into the teacher's space, fitted by
  least squares on the calibration tokens (:meth:`EmbeddingObjective.prepare`) and then trained with the student.
* ``classification`` (sequence classifiers, ``…ForSequenceClassification``): forward KL between the teacher's and
  the student's class distributions at a temperature (KDKLDiv on the logits: the teacher labels the unlabelled
  text); proxy: the mean KL at T=1 on held-out texts; metric: top-1 agreement with the teacher on them.
"""
import math
import weakref

import torch
import torch.nn.functional as F

from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig


def _device(model):
    return next(model.parameters()).device


class _Objective:
    """Hooks that only an objective comparing tensors of different widths needs."""

    def prepare(self, teacher, student, batches):
        """Called once a student is built or restored, before it is scored or trained."""

    def bind(self, dual, student):
        """Called with the distillation wrapper of ``student`` before its optimizer is made."""


class LmObjective(_Objective):
    name = "lm"
    metric_name = "perplexity"
    lower_is_better = True

    def distill_config(self, temperature, student=None):
        return KnowledgeDistillConfig().add_output_soft_label(
            {"t_output_idx": "logits", "s_output_idx": "logits",
             "loss_func": [{"func_name": "KDKLDiv", "func_weight": 1, "temperature": temperature}]})

    @staticmethod
    def inputs(batch, device):
        return {"input_ids": batch["input_ids"].to(device), "use_cache": False}

    CACHE_BYTES = 2 ** 30  # the teacher's log-probabilities on the held-out rows are kept when they fit

    def __init__(self):
        self._teacher_cache = (None, None)

    def _teacher_log_probs(self, teacher, rows, batch):
        """The teacher's log-probabilities on ``rows`` (computed once per teacher and rows when small enough)."""
        key, cached = self._teacher_cache
        if key == (id(teacher), id(rows)):
            return cached
        vocab = teacher.get_output_embeddings().weight.shape[0]
        log_probs = []
        for start in range(0, len(rows), batch):
            part = rows.select(range(start, min(start + batch, len(rows))))
            log_probs.append(F.log_softmax(teacher(**self.inputs(part, _device(teacher))).logits.float(), -1))
        if rows.ids.numel() * vocab * 4 <= self.CACHE_BYTES:
            self._teacher_cache = ((id(teacher), id(rows)), log_probs)
        return log_probs

    @torch.no_grad()
    def proxy(self, teacher, student, rows, batch_size=4):
        """Mean KL(teacher || student) per token on ``rows``."""
        total, count = 0.0, 0
        for index, log_p in enumerate(self._teacher_log_probs(teacher, rows, batch_size)):
            start = index * batch_size
            batch = rows.select(range(start, min(start + batch_size, len(rows))))
            log_q = F.log_softmax(student(**self.inputs(batch, _device(student))).logits.float(), -1)
            kl = (log_p.exp() * (log_p - log_q.to(log_p.device))).sum(-1)
            total += kl.sum().item()
            count += kl.numel()
        return total / count

    @torch.no_grad()
    def metric(self, teacher, model, rows, batch_size=4):
        total, count = 0.0, 0
        for start in range(0, len(rows), batch_size):
            ids = rows.ids[start:start + batch_size].to(_device(model))
            logits = model(input_ids=ids, use_cache=False).logits.float()
            total += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                     reduction="sum").item()
            count += ids[:, 1:].numel()
        return math.exp(total / count)


class EmbeddingObjective(_Objective):
    name = "embedding"
    metric_name = "embedding cosine"
    lower_is_better = False
    RIDGE = 1e-3  # relative to the mean squared activation: keeps the least-squares fit well posed

    def __init__(self):
        self.projections = weakref.WeakKeyDictionary()  # student -> nn.Linear into the teacher's hidden size
        self._teacher_targets = (None, None)  # the teacher's hidden states on the calibration batches, once

    def distill_config(self, temperature, student=None):
        match = {"t_output_idx": "last_hidden_state", "s_output_idx": "last_hidden_state",
                 "loss_func": [{"func_name": "HiddenCosine", "func_weight": 1}]}
        projection = self.projections.get(student) if student is not None else None
        if projection is not None:
            match["adaptor"] = [projection.in_features, projection.out_features]
        return KnowledgeDistillConfig().add_output_soft_label(match)

    @staticmethod
    def inputs(batch, device):
        return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}

    @staticmethod
    def _hidden(model, batch):
        inputs = EmbeddingObjective.inputs(batch, _device(model))
        return model(**inputs).last_hidden_state.float(), inputs["attention_mask"].bool()

    @torch.no_grad()
    def prepare(self, teacher, student, batches):
        """Fit the projection of a student narrower than the teacher: ridge least squares from the student's to the
        teacher's last hidden states at the unpadded tokens of ``batches``."""
        widths = (student.config.hidden_size, teacher.config.hidden_size)
        if widths[0] == widths[1]:
            self.projections.pop(student, None)
            return
        x = torch.cat([hidden[mask].double().cpu() for hidden, mask in self._eval_hidden(student, batches)])
        key, targets = self._teacher_targets
        if key != (id(teacher), id(batches)):  # every candidate of a search is fitted on the same batches
            targets = torch.cat([hidden[mask].double().cpu() for hidden, mask in self._eval_hidden(teacher, batches)])
            self._teacher_targets = ((id(teacher), id(batches)), targets)
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # the bias
        gram = x.T @ x
        gram += self.RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
        solution = torch.linalg.solve(gram, x.T @ targets)
        projection = torch.nn.Linear(*widths, device=_device(student))
        projection.weight.copy_(solution[:-1].T)
        projection.bias.copy_(solution[-1])
        self.projections[student] = projection

    def _eval_hidden(self, model, batches):
        """``[(last hidden states, mask)]`` of ``model`` in eval mode (no dropout: a function of the weights alone),
        its mode given back after."""
        training = model.training
        model.eval()
        try:
            return [self._hidden(model, batch) for batch in batches]
        finally:
            model.train(training)

    def bind(self, dual, student):
        """Train the student's projection in place of the adaptor the wrapper made."""
        projection = self.projections.get(student)
        if projection is not None:
            dual.adaptors[dual.output_matches[0].adaptor_key] = projection

    def _pooled(self, model, batch):
        """Mean-pooled, L2-normalised embeddings; a student narrower than its teacher through its projection."""
        hidden, mask = self._hidden(model, batch)
        mask = mask.unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        projection = self.projections.get(model)
        if projection is not None:
            pooled = projection(pooled)  # linear: projecting the mean is the mean of the projections
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def _cosine(self, teacher, student, rows, batch_size=8):
        total = 0.0
        for start in range(0, len(rows), batch_size):
            batch = rows.select(range(start, min(start + batch_size, len(rows))))
            total += (self._pooled(teacher, batch) * self._pooled(student, batch).to(_device(teacher))).sum().item()
        return total / len(rows)

    def proxy(self, teacher, student, rows):
        return 1 - self._cosine(teacher, student, rows)

    def metric(self, teacher, model, rows):
        return self._cosine(teacher, model, rows)


class ClassificationObjective(_Objective):
    """Distils the class logits; with labelled data (:meth:`use_labels`) also the cross-entropy with the labels,
    weighted as ``get_total_loss`` weighs a hard-label loss, and the metric becomes held-out accuracy."""

    name = "classification"
    metric_name = "agreement with the teacher"
    lower_is_better = False
    inputs = staticmethod(EmbeddingObjective.inputs)

    def __init__(self):
        self.label_weight = 0.0

    def use_labels(self, weight):
        self.label_weight = weight
        self.metric_name = "accuracy"

    def distill_config(self, temperature, student=None):
        config = LmObjective.distill_config(self, temperature)  # forward KL on the logits, here the class logits
        if self.label_weight:
            config.set_hard_label(self.label_weight, 0)
        return config

    def total_loss(self, dual, student_outputs, batch):
        """The distillation loss of the last forward, with the labels' cross-entropy when ``batch`` has labels."""
        if not self.label_weight or "labels" not in batch:
            return dual.distill_loss
        logits = student_outputs.logits.float()
        return dual.get_total_loss(F.cross_entropy(logits, batch["labels"].to(logits.device)))

    def _log_probs(self, model, batch):
        return F.log_softmax(model(**self.inputs(batch, _device(model))).logits.float(), -1)

    def _batches(self, rows, batch_size):
        for start in range(0, len(rows), batch_size):
            yield rows.select(range(start, min(start + batch_size, len(rows))))

    @torch.no_grad()
    def proxy(self, teacher, student, rows, batch_size=8):
        """Mean KL(teacher || student) per held-out text."""
        total = 0.0
        for batch in self._batches(rows, batch_size):
            log_p = self._log_probs(teacher, batch)
            log_q = self._log_probs(student, batch).to(log_p.device)
            total += (log_p.exp() * (log_p - log_q)).sum().item()
        return total / len(rows)

    @torch.no_grad()
    def metric(self, teacher, model, rows, batch_size=8):
        """The share of held-out texts on which ``model`` predicts the label (labelled data) or else the teacher's
        class."""
        agree = 0
        for batch in self._batches(rows, batch_size):
            predicted = self._log_probs(model, batch).argmax(-1).cpu()
            wanted = batch["labels"] if self.label_weight else self._log_probs(teacher, batch).argmax(-1).cpu()
            agree += (predicted == wanted).sum().item()
        return agree / len(rows)


def add_hidden_state_losses(config, teacher, student, layer_map, weight):
    """Add to the distillation ``config`` one HiddenCosine soft label per student layer: its output against the
    output of the teacher layer ``layer_map`` says it was filled from, ``weight`` shared out over the layers, through
    an adaptor when the hidden sizes differ. Returns ``config``."""
    from msmodelslim.pytorch.prune.structure import layer_stem

    if not layer_map:
        return config
    stem = layer_stem(teacher)  # e.g. "model.layers."
    widths = [student.config.hidden_size, teacher.config.hidden_size]
    for student_layer, teacher_layer in sorted(layer_map.items()):
        match = {"t_module": f"{stem}{teacher_layer}", "s_module": f"{stem}{student_layer}", "t_output_idx": 0,
                 "s_output_idx": 0, "loss_func": [{"func_name": "HiddenCosine", "func_weight": weight / len(layer_map)}]}
        if widths[0] != widths[1]:
            match["adaptor"] = widths
        config.add_inter_soft_label(match)
    return config


CLASSIFIER_SUFFIX = "ForSequenceClassification"


def objective_for(name, model):
    """The objective ``name`` (``"auto"``: ``lm`` for a causal language model, ``classification`` for a sequence
    classifier, else ``embedding``).

    Raises:
        ValueError: an objective the model's outputs cannot serve (``lm`` without next-token logits, ``embedding``
            without hidden states, ``classification`` without class logits).
    """
    kind = type(model).__name__
    causal = kind.endswith(("ForCausalLM", "LMHeadModel"))
    classifier = kind.endswith(CLASSIFIER_SUFFIX)
    if name == "auto":
        name = "lm" if causal else "classification" if classifier else "embedding"
    if name == "lm" and not causal:
        raise ValueError(f"objective 'lm' needs a causal language model (…ForCausalLM), not {kind}.")
    if name == "embedding" and (causal or classifier):
        raise ValueError(f"objective 'embedding' needs an encoder (e.g. BertModel), not {kind}.")
    if name == "classification" and not classifier:
        raise ValueError(f"objective 'classification' needs a sequence classifier (…{CLASSIFIER_SUFFIX}), not {kind}.")
    return {"lm": LmObjective, "embedding": EmbeddingObjective, "classification": ClassificationObjective}[name]()
