"""KnowledgeDistillConfig: the original's keys, chaining and validation errors."""
import pytest
import torch

from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig, get_distill_model

LOSS = [{"func_name": "KDCrossEntropy", "func_weight": 1, "temperature": 1}]


def output_match(**overrides):
    config = {"t_output_idx": 0, "s_output_idx": 0, "loss_func": [dict(LOSS[0])]}
    config.update(overrides)
    return config


def test_defaults_and_chaining():
    config = KnowledgeDistillConfig()
    assert (config.train_teacher, config.hard_label_loss_weight, config.output_replace_idx) == (False, 0.5, 0)
    assert config.inter_match_keys == ["t_module", "s_module", "t_output_idx", "s_output_idx", "loss_func"]
    assert config.output_match_keys == ["t_output_idx", "s_output_idx", "loss_func"]
    same = (config.set_hard_label(0.3, 2).add_output_soft_label(output_match())
            .add_inter_soft_label({"t_module": "a", "s_module": "b", "t_output_idx": 0, "s_output_idx": 0,
                                   "loss_func": [{"func_name": "HiddenMse", "func_weight": 1}]})
            .add_custom_loss_func("mine", torch.nn.MSELoss()).set_teacher_train())
    assert same is config and config.train_teacher and config.hard_label_loss_weight == 0.3
    assert config.output_replace_idx == 2


def test_set_hard_label_validation():
    config = KnowledgeDistillConfig()
    with pytest.raises(TypeError, match="weight must be float, not int."):
        config.set_hard_label(1, 0)
    with pytest.raises(ValueError, match="weight must be between 0 and 1, but input 1.0"):
        config.set_hard_label(1.0, 0)
    with pytest.raises(ValueError, match="index must be greater than 0, but input -1"):
        config.set_hard_label(0.5, -1)
    with pytest.raises(TypeError, match="index must be int, not float."):
        config.set_hard_label(0.5, 1.0)
    with pytest.raises(TypeError, match="index must be int, not NoneType."):
        config.set_hard_label(0.5, None)
    config.set_hard_label(0.5, 0)


def test_soft_label_validation():
    config = KnowledgeDistillConfig()
    with pytest.raises(TypeError, match="config must be dict, not list."):
        config.add_output_soft_label([])
    with pytest.raises(ValueError, match=r"config must have key: \['s_output_idx', 'loss_func'\]"):
        config.add_output_soft_label({"t_output_idx": 0})
    with pytest.raises(ValueError, match=r'config\["t_output_idx"\] = -1 is smaller than 0.'):
        config.add_output_soft_label(output_match(t_output_idx=-1))
    with pytest.raises(TypeError, match=r'config\["s_output_idx"\] must be int, not bool.'):
        config.add_output_soft_label(output_match(s_output_idx=True))
    with pytest.raises(TypeError, match=r'config\["t_module"\] must be str, not int.'):
        config.add_inter_soft_label({**output_match(), "t_module": 3, "s_module": "x"})
    with pytest.raises(ValueError, match="loss_func must have func_name"):
        config.add_output_soft_label(output_match(loss_func=[{"func_weight": 1}]))
    with pytest.raises(ValueError, match="loss_func must have func_weight"):
        config.add_output_soft_label(output_match(loss_func=[{"func_name": "KDMse", "func_weight": 0}]))
    with pytest.raises(TypeError, match="temperature must be int or float, not str."):
        config.add_output_soft_label(output_match(loss_func=[{"func_name": "KDMse", "func_weight": 1,
                                                              "temperature": "2"}]))
    with pytest.raises(ValueError, match="Value of temperature is invalid."):
        config.add_output_soft_label(output_match(loss_func=[{"func_name": "KDMse", "func_weight": 1,
                                                              "temperature": -1}]))
    with pytest.raises(TypeError, match="func_param must be list"):
        config.add_output_soft_label(output_match(loss_func=[{"func_name": "MMD", "func_weight": 1,
                                                              "func_param": 4}]))
    with pytest.raises(TypeError, match="loss_func must be a list"):
        config.add_output_soft_label(output_match(loss_func={"func_name": "KDMse", "func_weight": 1}))
    assert config.output_matches == []


def test_entries_are_normalised_on_a_copy():
    config = KnowledgeDistillConfig()
    entry = {"func_name": "KDMse", "func_weight": 1}
    user = {"t_output_idx": "logits", "s_output_idx": 0, "loss_func": [entry]}
    config.add_output_soft_label(user)
    assert config.output_matches[0]["loss_func"][0] == {"func_name": "KDMse", "func_weight": 1, "temperature": None,
                                                        "func_param": []}
    assert entry == {"func_name": "KDMse", "func_weight": 1}  # the caller's dict is not changed


def test_custom_loss_validation_and_scope():
    config = KnowledgeDistillConfig()
    with pytest.raises(TypeError, match="name must be str"):
        config.add_custom_loss_func(3, torch.nn.MSELoss())
    with pytest.raises(TypeError, match="`instance` must be a PyTorch `nn.Module`"):
        config.add_custom_loss_func("mine", lambda s, t: (s - t).sum())
    teacher, student = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    mine = KnowledgeDistillConfig().add_custom_loss_func("L1", torch.nn.L1Loss()).add_output_soft_label(
        output_match(loss_func=[{"func_name": "L1", "func_weight": 1}]))
    get_distill_model(teacher, student, mine)  # registered and used in the same config
    other = KnowledgeDistillConfig().add_output_soft_label(output_match(loss_func=[{"func_name": "L1",
                                                                                      "func_weight": 1}]))
    with pytest.raises(ValueError, match='The func name "L1" not exist. please check config.'):
        get_distill_model(teacher, student, other)  # nothing leaked into a global registry


def test_get_soft_label_shape():
    config = KnowledgeDistillConfig().add_inter_soft_label(
        {**output_match(), "t_module": "t.x", "s_module": "s.x", "shape": [2, 8]})
    assert config.get_soft_label_shape() == {"t.x": [2, 8], "s.x": [2, 8]}
