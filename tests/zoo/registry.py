"""The structured-pruning test zoo: name -> builder of ``(model in eval mode, sample inputs)``."""
import torch

from msmodelslim.pytorch.utils.calibration import CallParams
from zoo import cnn, hf


def _plain(factory, shape):
    def build():
        torch.manual_seed(0)
        return factory().eval(), torch.randn(*shape)
    return build


def _hf(factory):
    def build():
        torch.manual_seed(0)
        model, batch = factory()
        return model, CallParams(**batch)
    return build


ZOO = {
    "vgg16": _plain(lambda: cnn.VGG16(num_classes=10, width=0.25, hidden=256), (1, 3, 64, 64)),
    "resnet18": _plain(lambda: cnn.resnet18(10), (1, 3, 64, 64)),
    "resnet50": _plain(lambda: cnn.resnet50(10), (1, 3, 64, 64)),
    "mobilenet_v2": _plain(lambda: cnn.MobileNetV2(10), (1, 3, 64, 64)),
    "densenet_block": _plain(cnn.DenseBlockNet, (1, 3, 32, 32)),
    "vit_mha": _plain(cnn.ViT, (1, 3, 32, 32)),
    **{f"hf_{name}": _hf(factory) for name, factory in hf.ALL.items()},
}

# A ViT's first layer (the patch embedding) writes the residual stream, which the default protection of the first
# layer would freeze; letting it shrink is what reaches 50 %.
UN_PRUNE = {"vit_mha": [-1], "hf_vit": [-1]}


def logits(model, inputs):
    """The model's output tensor (``.logits`` of a Hugging Face output)."""
    with torch.no_grad():
        out = inputs(model) if isinstance(inputs, CallParams) else model(inputs)
    return out if isinstance(out, torch.Tensor) else out.logits
