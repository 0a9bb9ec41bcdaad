"""The framework-free architecture search and the SlimConfig checks."""
import pytest
from hypothesis import given, settings, strategies as st

from msmodelslim.common.slim import SlimConfig
from msmodelslim.common.slim.search import Architecture, SearchSpace, candidates, describe_unreachable, spread


def llama_like_count(vocab):
    """Parameters of a Llama-like model with tied embeddings (head_dim 16)."""

    def count(arch):
        attention = arch.hidden * 16 * (2 * arch.heads + 2 * arch.kv_heads)
        return vocab * arch.hidden + arch.hidden + arch.layers * (attention + 3 * arch.hidden * arch.ffn
                                                                   + 2 * arch.hidden)

    return count


@settings(max_examples=60, deadline=None)
@given(layers=st.integers(2, 12), kv=st.integers(1, 4), rep=st.integers(1, 3), ffn_mult=st.integers(2, 6),
       budget=st.floats(0.2, 0.9), hidden_follows=st.booleans())
def test_every_candidate_meets_the_budget_by_its_true_count(layers, kv, rep, ffn_mult, budget, hidden_follows):
    heads = kv * rep
    dense = Architecture(layers, heads * 16, heads, kv, heads * 16 * ffn_mult)
    space = SearchSpace(dense, 16, hidden_follows)
    count = llama_like_count(vocab=100)
    found, smallest = candidates(space, count, budget, 0.02, align=16)
    assert smallest is not None and count(smallest.architecture) == smallest.size
    for candidate in found:
        arch = candidate.architecture
        assert abs(count(arch) - budget * count(dense)) <= 0.02 * count(dense)
        assert count(arch) == candidate.size
        assert arch.heads % arch.kv_heads == 0 and arch.heads // arch.kv_heads == rep
        assert 1 <= arch.layers <= layers and arch.ffn <= dense.ffn and arch.hidden <= dense.hidden
        if hidden_follows:
            assert arch.hidden == arch.heads * 16


def test_a_budget_below_the_smallest_architecture_is_explained():
    dense = Architecture(4, 64, 4, 2, 256)
    found, smallest = candidates(SearchSpace(dense, 16, False), llama_like_count(vocab=30000), 0.05, 0.02, 16)
    assert not found
    message = describe_unreachable(0.05, smallest, "params")
    assert "smallest reachable architecture" in message and smallest.architecture.label() in message


def test_spread_keeps_the_ends_and_the_order():
    items = list(range(50))
    picked = spread(items, 5)
    assert picked == sorted(picked) and picked[0] == 0 and picked[-1] == 49 and len(picked) == 5
    assert spread(items[:3], 5) == [0, 1, 2]


@pytest.mark.parametrize("field, value, error, words", [
    ("budget", 1.0, ValueError, "SlimConfig.budget must be between 0 and 1"),
    ("budget", 0, ValueError, "SlimConfig.budget must be between 0 and 1"),
    ("budget", "0.5", TypeError, "SlimConfig.budget must be float, not str"),
    ("budget_kind", "flops", ValueError, "SlimConfig.budget_kind must be one of"),
    ("train_tokens", 0, ValueError, "SlimConfig.train_tokens must be at least 1"),
    ("train_tokens", 1.5, TypeError, "SlimConfig.train_tokens must be int"),
    ("batch_size", True, TypeError, "SlimConfig.batch_size must be int, not bool"),
    ("learning_rate", float("nan"), ValueError, "finite"),
    ("micro_batch_size", 3, ValueError, "multiple of micro_batch_size"),
    ("learning_rate", 10 ** 400, ValueError, "SlimConfig.learning_rate must be a finite number, got an integer of 401"),
    ("hidden_weight", -0.5, ValueError, "SlimConfig.hidden_weight must be 0 or more, got -0.5"),
    ("hidden_weight", "1", TypeError, "SlimConfig.hidden_weight must be float, not str"),
])
def test_config_checks_name_the_field_and_the_value(field, value, error, words):
    config = SlimConfig(**{field: value})
    with pytest.raises(error, match=words.replace("(", r"\(")):
        config.validate()


def test_an_int_budget_fraction_field_is_taken_as_float():
    import numpy as np

    config = SlimConfig(learning_rate=1, hidden_weight=np.float32(0.5)).validate()
    assert isinstance(config.learning_rate, float) and type(config.hidden_weight) is float
