"""get_distill_model / DistillDualModels with Hugging Face BERT models: the documented flow, keyword inputs, output
indexing, hooks, the frozen teacher, adaptors and errors."""
import pytest
import torch
import transformers as T

from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig, get_distill_model

CONFIG = dict(vocab_size=120, hidden_size=64, num_attention_heads=4, intermediate_size=128, max_position_embeddings=32)


def bert_pair(student_hidden=64, cls=T.BertForQuestionAnswering):
    torch.manual_seed(0)
    teacher = cls(T.BertConfig(num_hidden_layers=4, **CONFIG))
    student_config = dict(CONFIG, hidden_size=student_hidden)
    student = cls(T.BertConfig(num_hidden_layers=2, **student_config))
    return teacher, student


def inputs():
    input_ids = torch.randint(0, 120, (2, 10))
    return input_ids, torch.zeros_like(input_ids), torch.ones_like(input_ids)


def test_document_flow_with_positional_inputs():
    teacher_model, student_model = bert_pair()
    from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig, get_distill_model
    distill_config = KnowledgeDistillConfig()
    distill_config.add_output_soft_label({
                    "t_output_idx": 1,
                    "s_output_idx": 1,
                    "loss_func": [{"func_name": "KDCrossEntropy",
                                   "func_weight": 1,
                                   "temperature": 1}]})
    distill_model = get_distill_model(teacher_model, student_model, distill_config)   #请传入teacher模型、student模型的实例
    model = distill_model.student_model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    input_ids, segment_ids, input_mask = inputs()
    teacher_before = {k: v.clone() for k, v in teacher_model.state_dict().items()}
    student_before = {k: v.clone() for k, v in student_model.state_dict().items()}
    for _ in range(2):
        loss, student_outputs, teacher_outputs = distill_model (input_ids, segment_ids, input_mask)  # noqa: E211
        total = distill_model.get_total_loss(student_outputs.start_logits.square().mean())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    student_model = distill_model.get_student_model()
    expected = -(teacher_outputs.end_logits.softmax(-1) * student_outputs.end_logits.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(loss, expected)
    assert all(torch.equal(teacher_model.state_dict()[k], v) for k, v in teacher_before.items())
    assert any(not torch.equal(student_model.state_dict()[k], v) for k, v in student_before.items())
    assert student_model is model


def test_keyword_inputs_and_string_keys():
    teacher, student = bert_pair(cls=T.BertForSequenceClassification)
    config = KnowledgeDistillConfig().add_output_soft_label(
        {"t_output_idx": "logits", "s_output_idx": 0,
         "loss_func": [{"func_name": "KDKLDiv", "func_weight": 1, "temperature": 2}]})
    model = get_distill_model(teacher, student, config)
    input_ids, _, mask = inputs()
    loss, student_out, teacher_out = model(input_ids=input_ids, attention_mask=mask)
    assert loss.requires_grad and student_out.logits.shape == teacher_out.logits.shape == (2, 2)


def test_out_of_range_and_unknown_keys_name_the_match():
    teacher, student = bert_pair()
    for index, message in ((5, r"s_output_idx in output_match0 .*out of range"), ("hidden", "no field 'hidden'")):
        config = KnowledgeDistillConfig().add_output_soft_label(
            {"t_output_idx": 0, "s_output_idx": index, "loss_func": [{"func_name": "KDMse", "func_weight": 1}]})
        with pytest.raises(ValueError, match=message):
            get_distill_model(teacher, student, config)(*inputs())


def test_intermediate_match_hooks_are_removed():
    teacher, student = bert_pair()
    config = KnowledgeDistillConfig().add_inter_soft_label(
        {"t_module": "bert.encoder.layer.3.output", "s_module": "bert.encoder.layer.1.output", "t_output_idx": 0,
         "s_output_idx": 0, "loss_func": [{"func_name": "HiddenMse", "func_weight": 1}]})
    model = get_distill_model(teacher, student, config)
    input_ids, _, mask = inputs()
    loss, _, _ = model(input_ids=input_ids, attention_mask=mask)
    assert loss.item() > 0
    returned = model.get_student_model()
    assert all(not m._forward_hooks for m in returned.modules())
    assert all(not m._forward_hooks for m in teacher.modules())
    assert all(p.requires_grad for p in teacher.parameters())  # flags given back
    with get_distill_model(teacher, student, config) as again:
        again(input_ids=input_ids, attention_mask=mask)
    assert all(not m._forward_hooks for m in student.modules())


def test_teacher_is_frozen_eval_and_never_cast():
    teacher, student = bert_pair()
    config = KnowledgeDistillConfig().add_output_soft_label(
        {"t_output_idx": 0, "s_output_idx": 0, "loss_func": [{"func_name": "KDMse", "func_weight": 1}]})
    model = get_distill_model(teacher, student, config)
    model.train()  # e.g. a training framework calling .train() on everything
    _, _, teacher_out = model(*inputs())
    assert not teacher.training and student.training
    assert teacher_out.start_logits.grad_fn is None
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    trained = {id(p) for p in model.student_model.parameters()}
    assert not trained & {id(p) for p in teacher.parameters()}
    assert not any(p.requires_grad for p in teacher.parameters())
    config.set_teacher_train()
    model = get_distill_model(teacher, student, config)
    model(*inputs())
    assert teacher.training
    half = get_distill_model(teacher, student, KnowledgeDistillConfig().set_teacher_dtype(torch.bfloat16))
    assert all(p.dtype == torch.bfloat16 for p in half.teacher_model.parameters())


def _assert_a_32_to_64_adaptor_trains(model, adaptor):
    assert (adaptor.in_features, adaptor.out_features) == (32, 64)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    before = adaptor.weight.clone()
    loss, _, _ = model(*inputs())
    loss.backward()
    optimizer.step()
    assert not torch.equal(adaptor.weight, before)


def test_shape_mismatch_and_adaptor():
    teacher, student = bert_pair(student_hidden=32)
    match = {"t_module": "bert.encoder.layer.3.output", "s_module": "bert.encoder.layer.1.output",
             "t_output_idx": 0, "s_output_idx": 0, "loss_func": [{"func_name": "HiddenMse", "func_weight": 1}]}
    plain = get_distill_model(teacher, student, KnowledgeDistillConfig().add_inter_soft_label(dict(match)))
    with pytest.raises(ValueError, match=r"shape \(2, 10, 32\).*\(2, 10, 64\).*adaptor"):
        plain(*inputs())
    plain.close()
    model = get_distill_model(teacher, student, KnowledgeDistillConfig().add_inter_soft_label(
        dict(match, adaptor=True)))
    adaptor = model.adaptors["inter0"]
    _assert_a_32_to_64_adaptor_trains(model, adaptor)
    returned = model.get_student_model()
    assert not any(p is adaptor.weight for p in returned.parameters())


def test_an_output_soft_label_takes_an_adaptor_of_given_widths():
    """The last hidden states of a narrower student: the adaptor's widths are given (an output has no module to
    infer them from), it trains, and ``True`` is refused with the hint."""
    teacher, student = bert_pair(student_hidden=32, cls=T.BertModel)
    match = {"t_output_idx": "last_hidden_state", "s_output_idx": "last_hidden_state",
             "loss_func": [{"func_name": "HiddenCosine", "func_weight": 1}]}
    with pytest.raises(ValueError, match=r"output_match0.*\[student_width, teacher_width\]"):
        get_distill_model(teacher, student, KnowledgeDistillConfig().add_output_soft_label(dict(match, adaptor=True)))
    assert all(p.requires_grad for p in teacher.parameters())  # refused before the teacher was frozen
    model = get_distill_model(teacher, student, KnowledgeDistillConfig().add_output_soft_label(
        dict(match, adaptor=[32, 64])))
    adaptor = model.adaptors["output0"]
    _assert_a_32_to_64_adaptor_trains(model, adaptor)


def test_adaptor_widths_that_do_not_fit_are_named():
    """A student width other than the adaptor's: ValueError naming the match (not a matmul error); ``1`` is not
    ``True``; NumPy integers are widths."""
    import numpy as np

    teacher, student = bert_pair(student_hidden=32, cls=T.BertModel)
    match = {"t_output_idx": "last_hidden_state", "s_output_idx": "last_hidden_state",
             "loss_func": [{"func_name": "HiddenCosine", "func_weight": 1}]}
    with get_distill_model(teacher, student, KnowledgeDistillConfig().add_output_soft_label(
            dict(match, adaptor=[33, 64]))) as model:
        with pytest.raises(ValueError, match=r"output_match0.*maps width 33 to 64.*\(2, 10, 32\).*\[32, teacher_width\]"):
            model(*inputs())
    with get_distill_model(teacher, student, KnowledgeDistillConfig().add_output_soft_label(dict(match))) as model:
        with pytest.raises(ValueError, match=r"Add \"adaptor\": \[student_width, teacher_width\]"):
            model(*inputs())
    with pytest.raises(ValueError, match="'adaptor' must be True or"):
        KnowledgeDistillConfig().add_output_soft_label(dict(match, adaptor=1))
    with get_distill_model(teacher, student, KnowledgeDistillConfig().add_output_soft_label(
            dict(match, adaptor=[np.int64(32), np.int64(64)]))) as model:
        assert model.adaptors["output0"].in_features == 32


def test_mmd_compares_different_widths_without_adaptor():
    teacher, student = bert_pair(student_hidden=32)
    model = get_distill_model(teacher, student, KnowledgeDistillConfig().add_inter_soft_label(
        {"t_module": "bert.encoder.layer.3.output", "s_module": "bert.encoder.layer.1.output", "t_output_idx": 0,
         "s_output_idx": 0, "loss_func": [{"func_name": "MMD", "func_weight": 1}]}))
    loss, _, _ = model(*inputs())
    assert loss.item() > 0


def test_errors_of_get_distill_model():
    teacher, student = bert_pair()
    config = KnowledgeDistillConfig()
    with pytest.raises(ValueError, match="The model can't be None!"):
        get_distill_model(None, student, config)
    with pytest.raises(ValueError, match="The model must be a MindSpore or PyTorch model"):
        get_distill_model("teacher", student, config)
    with pytest.raises(TypeError, match="model must be a Torch.nn.Module instance. Not <class 'str'>"):
        get_distill_model(teacher, "student", config)
    with pytest.raises(TypeError, match="config must be KnowledgeDistillConfig, not dict."):
        get_distill_model(teacher, student, {})
    missing = KnowledgeDistillConfig().add_inter_soft_label(
        {"t_module": "bert.nope", "s_module": "bert.encoder", "t_output_idx": 0, "s_output_idx": 0,
         "loss_func": [{"func_name": "HiddenMse", "func_weight": 1}]})
    with pytest.raises(ValueError, match='The module "bert.nope" not in teacher model. Please check config.'):
        get_distill_model(teacher, student, missing)
    bad_param = KnowledgeDistillConfig().add_output_soft_label(
        {"t_output_idx": 0, "s_output_idx": 0,
         "loss_func": [{"func_name": "KDMse", "func_weight": 1, "func_param": [1, 2, 3]}]})
    with pytest.raises(TypeError):
        get_distill_model(teacher, student, bad_param)


def test_no_soft_label_gives_a_zero_loss_and_total_loss_weights():
    teacher, student = bert_pair()
    model = get_distill_model(teacher, student, KnowledgeDistillConfig().set_hard_label(0.25, 0))
    loss, _, _ = model(*inputs())
    assert loss.item() == 0.0
    assert model.get_total_loss(torch.tensor(2.0)).item() == pytest.approx(0.5)


def test_padded_positions_do_not_change_a_masked_loss():
    """The batch's attention mask reaches the mask-taking losses: tokens at padded positions - whose hidden states
    differ wildly between the two batches - leave the distillation loss unchanged."""
    from zoo.distill_pair import logits_and_hidden_config, tiny_bert_pair

    teacher, student = tiny_bert_pair()
    model = get_distill_model(teacher, student, logits_and_hidden_config())
    student.eval()  # no dropout: the two forward passes must be comparable
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, 7:], mask[1, 9:] = 0, 0
    other_ids = torch.where(mask.bool(), ids, torch.randint(1, 100, ids.shape, generator=generator))
    with torch.no_grad():
        loss, _, _ = model(input_ids=ids, attention_mask=mask)
        other_loss, _, _ = model(input_ids=other_ids, attention_mask=mask)
        hidden = [student.bert(input_ids=i, attention_mask=mask).last_hidden_state for i in (ids, other_ids)]
    padded = ~mask.bool()
    assert (hidden[0][padded] - hidden[1][padded]).abs().max() > 0.1  # the padded positions really differ
    assert torch.allclose(loss, other_loss, rtol=1e-6, atol=1e-7), (loss, other_loss)
