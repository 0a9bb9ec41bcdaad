"""A tiny BERT teacher (2 layers, hidden 64) and student (1 layer, hidden 32) with a logits + hidden-state
distillation config, shared by the multi-process and CUDA distillation tests."""
import torch
import transformers as T

from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig

VOCAB, LABELS = 100, 3


def tiny_bert_pair(seed=0):
    """Return ``(teacher, student)``: BertForSequenceClassification models of different widths and depths."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, num_attention_heads=4, intermediate_size=64, max_position_embeddings=32,
                  num_labels=LABELS)
    teacher = T.BertForSequenceClassification(T.BertConfig(hidden_size=64, num_hidden_layers=2, **common))
    student = T.BertForSequenceClassification(T.BertConfig(hidden_size=32, num_hidden_layers=1, **common))
    return teacher.eval(), student


def logits_and_hidden_config():
    """KL on the logits (T=2) plus MSE between teacher layer 1 and student layer 0 through an adaptor."""
    return (KnowledgeDistillConfig()
            .add_output_soft_label({"t_output_idx": "logits", "s_output_idx": "logits",
                                    "loss_func": [{"func_name": "KDKLDiv", "func_weight": 1, "temperature": 2}]})
            .add_inter_soft_label({"t_module": "bert.encoder.layer.1", "s_module": "bert.encoder.layer.0",
                                   "t_output_idx": 0, "s_output_idx": 0, "adaptor": True,
                                   "loss_func": [{"func_name": "HiddenMse", "func_weight": 1}]}))
