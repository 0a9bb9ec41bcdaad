"""Pruning trained networks: what importance buys before fine-tuning, and what fine-tuning recovers."""
import copy

import pytest
import torch

from msmodelslim.pytorch.prune.prune_torch import PruneTorch
from zoo.digits import DigitsNet, accuracy, load, train


@pytest.mark.slow
def test_digits_cnn_l1_beats_random_and_fine_tuning_recovers():
    images, labels, train_idx, test_idx = load()
    torch.manual_seed(0)
    dense = DigitsNet()
    train(dense, images, labels, train_idx, epochs=10)
    dense_acc = accuracy(dense, images, labels, test_idx)
    assert dense_acc > 0.95
    sample = images[train_idx[:64]]
    total = sum(p.numel() for p in dense.parameters())

    def pruned(criterion):
        model = copy.deepcopy(dense)
        PruneTorch(model, sample).set_importance_evaluation_function(criterion).prune(0.5)
        assert abs(sum(p.numel() for p in model.parameters()) / total - 0.5) <= 0.02
        return model

    l1_model = pruned("l1")
    l1_acc = accuracy(l1_model, images, labels, test_idx)
    random_accs = []
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        model = pruned(lambda weight, g=generator: torch.rand(1, generator=g).item())
        random_accs.append(accuracy(model, images, labels, test_idx))
    mean_random = sum(random_accs) / len(random_accs)
    print(f"\ndigits: dense {dense_acc:.3f}, L1 {l1_acc:.3f}, random {mean_random:.3f} {random_accs}")
    assert l1_acc > mean_random + 0.02

    train(l1_model, images, labels, train_idx, epochs=2)
    tuned = accuracy(l1_model, images, labels, test_idx)
    print(f"digits: L1 after 2 epochs of fine-tuning {tuned:.3f}")
    assert tuned >= dense_acc - 0.02


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.5, 0.8])
def test_efficientnet_lite0_prune_and_replay(ratio):
    import json

    from msmodelslim import assets

    images = assets.sample_images(crops_per_image=8)
    model = assets.efficientnet_lite0()
    with torch.no_grad():
        reference = model(images)
    before = sum(p.numel() for p in model.parameters())
    agreement = {}
    for criterion in ("l1", "activation"):
        pruned_model = assets.efficientnet_lite0()
        desc = PruneTorch(pruned_model, images[:2]).set_importance_evaluation_function(criterion).prune(ratio)
        assert abs(sum(p.numel() for p in pruned_model.parameters()) / before - ratio) <= 0.02
        with torch.no_grad():
            out = pruned_model(images)
        assert out.shape == (len(images), 1000)
        agreement[criterion] = (out.argmax(1) == reference.argmax(1)).float().mean().item()
        fresh = assets.efficientnet_lite0()
        PruneTorch(fresh, torch.ones(1, 3, 224, 224)).prune_by_desc(json.loads(json.dumps(desc)))
        fresh.load_state_dict(pruned_model.state_dict())
        with torch.no_grad():
            assert torch.equal(fresh(images), out)
    print(f"\nEfficientNet-Lite0 at {ratio:.0%} of the parameters, top-1 agreement with dense on {len(images)} crops "
          f"(no fine-tuning): {agreement}")
    # the README's recommendation ("prefer activation for pretrained networks") rests on these outcomes
    assert agreement["activation"] > agreement["l1"]
    if ratio == 0.8:
        assert agreement == {"l1": 0.0, "activation": 1.0}
