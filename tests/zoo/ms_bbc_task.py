"""The BBC News distillation task in MindSpore, shared by ``tests/mindspore/test_distill_real_task_ms.py`` and
``benchmarks/bench_mindspore.py``: a mean-pooling classifier that is a "network with loss", NumPy splits of BBC
News, a 3-layer student pruned from the MindSpore all-MiniLM-L6 ``.ckpt``, a teacher head trained on frozen
features, and a training loop (``nn.TrainOneStepCell``) with or without a teacher. Imports no torch."""
import mindspore
import numpy as np
from mindspore import Tensor, nn, ops

from msmodelslim import assets
from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig, get_distill_model
from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
from zoo.ms_bert import MsBertConfig, MsBertModel

TEMPERATURE = 2.0
LAYER_MAP = {0: 0, 1: 2, 2: 5}
CLASSES = 5


class MsSentenceClassifier(nn.Cell):
    """Encoder, mean pooling over real tokens, linear head: ``construct(input_ids, attention_mask, labels) ->
    (cross-entropy loss, logits)``."""

    def __init__(self, encoder, num_classes=CLASSES):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Dense(encoder.config.hidden_size, num_classes)
        self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def pooled(self, input_ids, attention_mask):
        """Mean of the last hidden state over the real tokens."""
        hidden, _ = self.encoder(input_ids, attention_mask)
        mask = attention_mask.astype(mindspore.float32).expand_dims(-1)
        return (hidden * mask).sum(1) / ops.clamp(mask.sum(1), min=1.0)

    def construct(self, input_ids, attention_mask, labels):
        logits = self.head(self.pooled(input_ids, attention_mask))
        return self.ce(logits, labels), logits


class HardLoss(nn.Cell):
    """The student's own loss (output 0) alone: the hard-label-only baseline for ``nn.TrainOneStepCell``."""

    def __init__(self, student):
        super().__init__(auto_prefix=False)
        self.student = student

    def construct(self, *args):
        return self.student(*args)[0]


def bbc_splits_np(tokenizer, sizes, max_length=64, seed=0):
    """Disjoint, seeded subsets of BBC News with the given ``sizes``, tokenised to ``max_length``: a list of dicts
    of int32 NumPy arrays ``input_ids``, ``attention_mask``, ``labels``."""
    docs, labels, _ = assets.bbc_news()
    order = np.random.default_rng(seed).permutation(len(docs))
    if sum(sizes) > len(order):
        raise ValueError(f"BBC News has {len(order)} articles, fewer than {sum(sizes)}.")
    splits, start = [], 0
    for size in sizes:
        part = order[start:start + size]
        start += size
        encoded = tokenizer([docs[i] for i in part], padding="max_length", truncation=True, max_length=max_length,
                            return_tensors="np")
        splits.append({"input_ids": encoded["input_ids"].astype(np.int32),
                       "attention_mask": encoded["attention_mask"].astype(np.int32),
                       "labels": np.asarray([labels[i] for i in part], dtype=np.int32)})
    return splits


def concat(*splits):
    """One split made of several."""
    return {key: np.concatenate([split[key] for split in splits]) for key in splits[0]}


def batches(split, batch_size, seed=None):
    """Mini-batches ``(input_ids, attention_mask, labels)`` of Tensors, shuffled with ``seed`` (if given); the last
    incomplete batch is dropped so that every step has the same shapes."""
    count = len(split["labels"])
    order = np.random.default_rng(seed).permutation(count) if seed is not None else np.arange(count)
    for start in range(0, count - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        yield tuple(Tensor(split[key][index]) for key in ("input_ids", "attention_mask", "labels"))


def student_cell(ckpt_path, importance="first", calibration=None, big_cell=None):
    """MiniLM pruned into 3 layers (0, 2, 5) with FFN 768 from ``ckpt_path`` by ``prune_model_weight``."""
    return prune_into(student_skeleton(), ckpt_path, importance, calibration, big_cell)


def student_skeleton():
    """The small MiniLM Cell (3 layers, FFN 768) with fresh weights."""
    return MsBertModel(MsBertConfig.from_json_file(assets.minilm_l6_dir() / "config.json", num_hidden_layers=3,
                                                   intermediate_size=768))


def prune_into(cell, ckpt_path, importance="first", calibration=None, big_cell=None):
    """``cell`` loaded from the big MiniLM at ``ckpt_path`` by ``prune_model_weight`` (layers 0, 2, 5)."""
    prune = PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"]).add_blocks_params(
        r"encoder\.layer\.(\d+)\.", LAYER_MAP)
    if importance == "activation":
        prune.set_importance("activation", calibration, model=big_cell)
    else:
        prune.set_importance(importance)
    prune_model_weight(cell, prune, weight_file_path=str(ckpt_path))
    return cell


def accuracy(classifier, split, batch_size=50):
    """Fraction of correct predictions on a split (eval mode, restored afterwards)."""
    was_training = classifier.training
    classifier.set_train(False)
    correct, count = 0, len(split["labels"])
    for start in range(0, count, batch_size):
        ids, mask, labels = (Tensor(split[key][start:start + batch_size])
                             for key in ("input_ids", "attention_mask", "labels"))
        _, logits = classifier(ids, mask, labels)
        correct += int((logits.asnumpy().argmax(-1) == labels.asnumpy()).sum())
    classifier.set_train(was_training)
    return correct / count


def features(classifier, split, batch_size=50):
    """Pooled encoder features of a split as a float32 NumPy array (eval mode)."""
    classifier.set_train(False)
    out = []
    for start in range(0, len(split["labels"]), batch_size):
        ids, mask = (Tensor(split[key][start:start + batch_size]) for key in ("input_ids", "attention_mask"))
        out.append(classifier.pooled(ids, mask).asnumpy())
    return np.concatenate(out)


def train_head(classifier, split, epochs=40, lr=1e-2, seed=0):
    """Train only the head of ``classifier`` on its frozen encoder (features computed once; full batch Adam)."""
    x, y = Tensor(features(classifier, split)), Tensor(split["labels"])
    mindspore.set_seed(seed)
    net = nn.WithLossCell(classifier.head, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    step = nn.TrainOneStepCell(net, nn.Adam(classifier.head.trainable_params(), learning_rate=lr))
    step.set_train(True)
    for _ in range(epochs):
        step(x, y)
    classifier.set_train(False)
    return classifier


def teacher_classifier(train_split, seed=0):
    """MiniLM-L6 (real weights) plus a head trained on ``train_split``; every parameter frozen, eval mode."""
    from zoo.ms_bert import minilm_l6_ms

    mindspore.set_seed(seed)
    teacher = train_head(MsSentenceClassifier(minilm_l6_ms()), train_split, seed=seed)
    for param in teacher.get_parameters():
        param.requires_grad = False
    return teacher


def distill_config():
    """Hard label (student output 0, weight 0.5) plus KDCrossEntropy at T=2 between the logits (output 1)."""
    return KnowledgeDistillConfig().set_hard_label(0.5, 0).add_output_soft_label(
        {"t_output_idx": 1, "s_output_idx": 1,
         "loss_func": [{"func_name": "KDCrossEntropy", "func_weight": 1, "temperature": TEMPERATURE}]})


def optimizer(params, classifier, lr=5e-5, head_lr=1e-3):
    """AdamWeightDecay with the encoder at ``lr`` and the head at ``head_lr``."""
    head = {id(p) for p in classifier.head.get_parameters()}
    return nn.AdamWeightDecay([{"params": [p for p in params if id(p) not in head], "lr": lr},
                               {"params": [p for p in params if id(p) in head], "lr": head_lr}],
                              learning_rate=lr, weight_decay=0.01)


def train(student, split, teacher=None, epochs=6, batch_size=16, seed=0):
    """Fine-tune ``student`` (an :class:`MsSentenceClassifier`) on ``split`` with ``nn.TrainOneStepCell``: on its
    own cross-entropy, or - with ``teacher`` - through ``get_distill_model(teacher, student, distill_config())``.
    Returns the student (eval mode)."""
    mindspore.set_seed(seed)
    net = get_distill_model(teacher, student, distill_config()) if teacher is not None else HardLoss(student)
    step = nn.TrainOneStepCell(net, optimizer(net.trainable_params(), student))
    step.set_train(True)
    for epoch in range(epochs):
        for batch in batches(split, batch_size, seed=seed * 1000 + epoch):
            step(*batch)
    if teacher is not None:
        student = net.get_student_model()
    student.set_train(False)
    return student


def parameters_np(cell):
    """``{name: NumPy copy}`` of every parameter of ``cell``."""
    return {param.name: param.asnumpy().copy() for param in cell.get_parameters()}
