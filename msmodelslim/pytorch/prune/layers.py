"""What pruning means for each kind of layer: which tensors a channel lives in, and how to slice them.

A layer has up to two *roles*: ``"output"`` (its output channels/features) and ``"input"`` (its input
channels/features). Normalisation layers, PReLU and other per-channel layers only have ``"input"`` (their single
channel axis), as in the original msModelSlim ``desc``. Each role lists the tensors and axes that hold its
channels; the same table drives parameter counting for planning, importance scoring and the final slicing, so the
three can never disagree.

Supported: ``nn.Linear``, ``nn.ConvNd`` and ``nn.ConvTransposeNd`` (ungrouped or depthwise), Hugging Face
``Conv1D``, ``nn.BatchNormNd``, ``nn.InstanceNormNd``, ``nn.LayerNorm``, ``nn.GroupNorm``, ``nn.PReLU``,
``nn.Embedding``, ``nn.MultiheadAttention``, any norm-like module with a 1-D ``weight`` (RMSNorm and friends), the
routed experts of a mixture-of-experts layer stored as 3-D tensors (:class:`ExpertsSpec`), and a bare
``nn.Parameter`` along one axis.
"""
import math
from dataclasses import dataclass

import torch
from torch import nn

OUTPUT = "output"
INPUT = "input"
INNER = "inner"  # the hidden neurons of a block of experts (see ExpertsSpec)


@dataclass(frozen=True)
class Axis:
    """Channels of a role live along ``axis`` of tensor ``tensor`` (a dotted path below the layer).

    ``blocks`` > 1 means the axis holds that many consecutive copies of the channel dimension (the fused q/k/v
    rows of ``nn.MultiheadAttention``): channel ``c`` is at ``c, c + n, c + 2n, ...``.
    """

    tensor: str
    axis: int
    blocks: int = 1


def _is_conv1d(module):
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def _is_norm_like(module):
    """A module with a 1-D weight and no children: RMSNorm, custom LayerNorms, scale layers."""
    weight = getattr(module, "weight", None)
    return (isinstance(weight, nn.Parameter) and weight.dim() == 1 and not list(module.children())
            and not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)))


class LayerSpec:
    """Roles, sizes and slicing rules of one layer (see the module docstring)."""

    kind = "layer"

    def __init__(self, module):
        self.module = module

    def roles(self):
        """``{role: [Axis, ...]}`` of this layer."""
        raise NotImplementedError

    def size(self, role):
        """Number of channels of ``role`` in the layer as it is now."""
        axis = self.roles()[role][0]
        tensor = self.tensor(axis.tensor)
        return tensor.shape[axis.axis] // axis.blocks

    def tensor(self, path):
        obj = self.module
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    def check(self, kept):
        """Message explaining why keeping ``kept = {role: count}`` channels is impossible, or None."""
        for role, count in kept.items():
            if count < 1:
                return f"at least one {role} channel must stay"
        return None

    def channel_multiple(self, role):
        """Kept channel counts of ``role`` must be multiples of this (GroupNorm groups, attention heads)."""
        return 1

    def check_indices(self, keep):
        """Message explaining why keeping the channels ``keep = {role: indices}`` is impossible, or None."""
        return self.check({role: len(index) for role, index in keep.items()})

    def apply(self, keep, slicer):
        """Slice the layer in place to the channels ``keep = {role: LongTensor of kept indices}``."""
        for role, index in keep.items():
            for axis in self.roles()[role]:
                holder, _, attr = axis.tensor.rpartition(".")
                owner = self.tensor(holder) if holder else self.module
                value = getattr(owner, attr, None)
                if value is None:
                    continue
                setattr(owner, attr, slicer(value, axis, index))
        self.update_attributes({role: int(index.numel()) for role, index in keep.items()})

    def update_attributes(self, kept):
        """Set the shape attributes (``out_features`` ...) that forward() reads."""


def _weight_bias(weight_axis, with_bias=True, bias=True):
    axes = [Axis("weight", weight_axis)]
    if with_bias and bias:
        axes.append(Axis("bias", 0))
    return axes


class LinearSpec(LayerSpec):
    kind = "linear"

    def roles(self):
        return {OUTPUT: _weight_bias(0, self.module.bias is not None), INPUT: [Axis("weight", 1)]}

    def update_attributes(self, kept):
        if OUTPUT in kept:
            self.module.out_features = kept[OUTPUT]
        if INPUT in kept:
            self.module.in_features = kept[INPUT]


class Conv1DSpec(LayerSpec):
    """Hugging Face ``Conv1D`` (GPT-2): a Linear whose weight is stored ``[in, out]``."""

    kind = "conv1d"

    def roles(self):
        return {OUTPUT: _weight_bias(1, self.module.bias is not None), INPUT: [Axis("weight", 0)]}

    def update_attributes(self, kept):
        if OUTPUT in kept:
            self.module.nf = kept[OUTPUT]
        if INPUT in kept and hasattr(self.module, "nx"):
            self.module.nx = kept[INPUT]


class ConvSpec(LayerSpec):
    """Ungrouped convolution (and transposed convolution, whose weight is ``[in, out, ...]``)."""

    kind = "conv"

    def roles(self):
        out_axis, in_axis = (1, 0) if self.module.transposed else (0, 1)
        return {OUTPUT: _weight_bias(out_axis, self.module.bias is not None), INPUT: [Axis("weight", in_axis)]}

    def update_attributes(self, kept):
        if OUTPUT in kept:
            self.module.out_channels = kept[OUTPUT]
        if INPUT in kept:
            self.module.in_channels = kept[INPUT]


class DepthwiseConvSpec(LayerSpec):
    """Depthwise convolution: ``groups == in_channels == out_channels``; one role, ``output``."""

    kind = "depthwise_conv"

    def roles(self):
        return {OUTPUT: _weight_bias(0, self.module.bias is not None)}

    def update_attributes(self, kept):
        count = kept[OUTPUT]
        self.module.out_channels = self.module.in_channels = self.module.groups = count


class GroupedConvSpec(LayerSpec):
    """Grouped (not depthwise) convolution, pruned by whole groups (ResNeXt).

    The output channels are the weight's rows. The weight's second axis holds the ``in_channels / groups`` inputs of
    one group, which all stay: the input channels of a removed group disappear with its rows, so the input role has
    no tensor axis of its own. Both roles must lose the same whole groups (see :func:`check`).
    """

    kind = "grouped_conv"

    def roles(self):
        return {OUTPUT: _weight_bias(0, self.module.bias is not None), INPUT: []}

    def size(self, role):
        return self.module.out_channels if role == OUTPUT else self.module.in_channels

    def group_widths(self):
        """``(output channels, input channels)`` of one group."""
        groups = self.module.groups
        return self.module.out_channels // groups, self.module.in_channels // groups

    def check(self, kept):
        message = super().check(kept)
        if message is not None:
            return message
        out_width, in_width = self.group_widths()
        out_kept = kept.get(OUTPUT, self.module.out_channels)
        in_kept = kept.get(INPUT, self.module.in_channels)
        if out_kept % out_width or in_kept % in_width or out_kept // out_width != in_kept // in_width:
            return (f"a grouped convolution loses whole groups ({out_width} output and {in_width} input channels "
                    f"each): keeping {out_kept} output and {in_kept} input channels is not a whole number of groups")
        return None

    def check_indices(self, keep):
        message = super().check_indices(keep)
        if message is not None:
            return message
        out_width, in_width = self.group_widths()
        kept_groups = []
        for role, width, size in ((OUTPUT, out_width, self.module.out_channels),
                                  (INPUT, in_width, self.module.in_channels)):
            index = [int(i) for i in keep.get(role, range(size))]
            groups = sorted({i // width for i in index})
            if sorted(index) != [g * width + c for g in groups for c in range(width)]:
                return f"a grouped convolution keeps whole groups of {width} {role} channels; these are not"
            kept_groups.append(groups)
        if kept_groups[0] != kept_groups[1]:
            return "a grouped convolution must keep the same groups of input and output channels"
        return None

    def update_attributes(self, kept):
        out_width, in_width = self.group_widths()
        if OUTPUT in kept:
            self.module.out_channels = kept[OUTPUT]
            self.module.groups = kept[OUTPUT] // out_width
        if INPUT in kept:
            self.module.in_channels = kept[INPUT]
            self.module.groups = kept[INPUT] // in_width


class NormSpec(LayerSpec):
    """Per-channel layers: BatchNorm, InstanceNorm, GroupNorm, PReLU and 1-D-weight norms (RMSNorm ...)."""

    kind = "norm"

    def roles(self):
        axes = [Axis(name, 0) for name in ("weight", "bias") if getattr(self.module, name, None) is not None]
        if isinstance(self.module, (nn.modules.batchnorm._NormBase,)):
            axes += [Axis(name, 0) for name in ("running_mean", "running_var")
                     if getattr(self.module, name, None) is not None]
        return {INPUT: axes}

    def size(self, role):
        for attr in ("num_features", "num_channels", "num_parameters"):
            if hasattr(self.module, attr):
                return getattr(self.module, attr)
        return super().size(role)

    def channel_multiple(self, role):
        return self.module.num_groups if isinstance(self.module, nn.GroupNorm) else 1

    def check(self, kept):
        message = super().check(kept)
        if message is None and isinstance(self.module, nn.GroupNorm) and kept[INPUT] % self.module.num_groups:
            message = f"GroupNorm needs a multiple of num_groups={self.module.num_groups} channels"
        return message

    def update_attributes(self, kept):
        count = kept[INPUT]
        for attr in ("num_features", "num_channels", "num_parameters"):
            if hasattr(self.module, attr):
                setattr(self.module, attr, count)
        if hasattr(self.module, "normalized_shape"):
            self.module.normalized_shape = (count,)
        if hasattr(self.module, "hidden_size") and isinstance(self.module.hidden_size, int):
            self.module.hidden_size = count


class LayerNormSpec(NormSpec):
    kind = "layernorm"

    def roles(self):
        return {INPUT: [Axis(name, -1) for name in ("weight", "bias") if getattr(self.module, name, None) is not None]}

    def size(self, role):
        return self.module.normalized_shape[-1]

    def update_attributes(self, kept):
        self.module.normalized_shape = tuple(self.module.normalized_shape[:-1]) + (kept[INPUT],)


class EmbeddingSpec(LayerSpec):
    kind = "embedding"

    def roles(self):
        return {OUTPUT: [Axis("weight", 1)]}

    def update_attributes(self, kept):
        self.module.embedding_dim = kept[OUTPUT]


class MultiheadAttentionSpec(LayerSpec):
    """``nn.MultiheadAttention`` pruned along its embedding dimension, which must stay divisible by num_heads."""

    kind = "multihead_attention"

    def roles(self):
        mha = self.module
        axes = []
        if mha.in_proj_weight is not None:
            axes += [Axis("in_proj_weight", 0, blocks=3), Axis("in_proj_weight", 1)]
        else:
            axes += [Axis(f"{p}_proj_weight", 0) for p in "qkv"] + [Axis(f"{p}_proj_weight", 1) for p in "qkv"]
        if mha.in_proj_bias is not None:
            axes.append(Axis("in_proj_bias", 0, blocks=3))
        axes += [Axis("out_proj.weight", 0), Axis("out_proj.weight", 1)]
        if mha.out_proj.bias is not None:
            axes.append(Axis("out_proj.bias", 0))
        axes += [Axis(name, 2) for name in ("bias_k", "bias_v") if getattr(mha, name) is not None]
        return {OUTPUT: axes}

    def size(self, role):
        return self.module.embed_dim

    def channel_multiple(self, role):
        return self.module.num_heads

    def check(self, kept):
        message = super().check(kept)
        if message is None and kept[OUTPUT] % self.module.num_heads:
            message = f"embed_dim must stay divisible by num_heads={self.module.num_heads}"
        return message

    def check_indices(self, keep):
        message = super().check_indices(keep)
        if message is None:
            head_dim = self.module.head_dim
            per_head = [0] * self.module.num_heads
            for channel in keep[OUTPUT].tolist():
                per_head[channel // head_dim] += 1
            if len(set(per_head)) > 1:  # the new head boundaries would cut through the old heads
                message = (f"every head must keep as many channels as the others (kept per head: {per_head}), "
                           f"or the heads' channels would mix")
        return message

    def update_attributes(self, kept):
        mha, count = self.module, kept[OUTPUT]
        before = mha.head_dim
        mha.embed_dim = mha.kdim = mha.vdim = count
        mha.head_dim = count // mha.num_heads
        mha.out_proj.in_features = mha.out_proj.out_features = count
        if mha.head_dim != before:
            # forward() scales the scores by 1/sqrt(head_dim): scaling the query by sqrt(new/old) keeps the dense
            # attention's temperature, so the kept channels score exactly as they did
            factor = math.sqrt(mha.head_dim / before)
            with torch.no_grad():
                mha.in_proj_weight[:count].mul_(factor)
                if mha.in_proj_bias is not None:
                    mha.in_proj_bias[:count].mul_(factor)


class ParameterSpec(LayerSpec):
    """A bare ``nn.Parameter`` (class token, position embedding, layer scale) pruned along one axis."""

    kind = "parameter"

    def __init__(self, parent, attr, axis):
        super().__init__(parent)
        self.attr = attr
        self.axis = axis

    def roles(self):
        return {OUTPUT: [Axis(self.attr, self.axis)]}


_EXPERT_UPS = ("gate_up_proj", "gate_proj", "up_proj")
_EXPERT_ATTRS = {INPUT: ("hidden_dim", "hidden_size"), OUTPUT: (), INNER: ("intermediate_dim", "intermediate_size",
                                                                          "expert_dim")}


def _experts_layout(module):
    """``(ups, fused)`` of a Hugging Face experts module, or None: ``ups`` are its 3-D input projections
    ``[experts, neurons, hidden]`` (``fused``: one ``gate_up_proj`` holding ``[gate | up]``, split by
    ``chunk(2)`` in forward(), as the source says; an interleaved layout is not recognised), beside a 3-D
    ``down_proj`` ``[experts, hidden, neurons]``; nothing else may carry weights."""
    import inspect

    params = dict(module.named_parameters(recurse=False))
    down = params.get("down_proj")
    if down is None or down.dim() != 3 or list(module.children()) and any(
            list(child.parameters()) for child in module.children()):
        return None
    ups = [name for name in _EXPERT_UPS if name in params]
    if not ups or set(params) != {*ups, "down_proj"} or ("gate_up_proj" in ups and len(ups) > 1):
        return None
    experts, hidden, neurons = down.shape
    fused = ups == ["gate_up_proj"]
    for name in ups:
        if params[name].shape != (experts, neurons * (2 if fused else 1), hidden):
            return None
    if fused:
        try:
            source = inspect.getsource(type(module).forward)
        except (OSError, TypeError):
            return None
        if ".chunk(2" not in source or "::2" in source:
            return None
    return ups, fused


class ExpertsSpec(LayerSpec):
    """The routed experts of a mixture-of-experts layer, stored as 3-D tensors (Hugging Face transformers 5):
    ``gate_up_proj`` ``[experts, 2 * neurons, hidden]`` (or ``gate_proj``/``up_proj`` ``[experts, neurons,
    hidden]``) and ``down_proj`` ``[experts, hidden, neurons]``. Roles: ``input`` (the hidden channels read),
    ``output`` (the hidden channels written) and ``inner`` (the neurons; neuron ``i`` of every expert together)."""

    kind = "experts"

    def __init__(self, module, ups, fused):
        super().__init__(module)
        self.ups, self.fused = ups, fused

    def roles(self):
        return {OUTPUT: [Axis("down_proj", 1)],
                INPUT: [Axis(name, 2) for name in self.ups],
                INNER: [Axis(name, 1, 2 if self.fused else 1) for name in self.ups] + [Axis("down_proj", 2)]}

    def channel_multiple(self, role):
        # transformers runs experts with grouped matrix products, whose rows must start on 16-byte boundaries
        return 8

    def update_attributes(self, kept):
        for role, count in kept.items():
            for attr in _EXPERT_ATTRS[role]:
                if isinstance(getattr(self.module, attr, None), int):
                    setattr(self.module, attr, count)


def layer_spec(module):
    """The :class:`LayerSpec` of ``module``, or None when pruning it is not supported."""
    if isinstance(module, nn.MultiheadAttention):
        return MultiheadAttentionSpec(module) if module._qkv_same_embed_dim else None
    if isinstance(module, nn.Linear):
        return LinearSpec(module)
    if _is_conv1d(module):
        return Conv1DSpec(module)
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups == 1:
            return ConvSpec(module)
        if module.groups == module.in_channels == module.out_channels and not module.transposed:
            return DepthwiseConvSpec(module)
        return GroupedConvSpec(module) if not module.transposed else None
    if isinstance(module, nn.LayerNorm):
        return LayerNormSpec(module) if len(module.normalized_shape) >= 1 else None
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
        return NormSpec(module)
    if isinstance(module, nn.PReLU):
        return NormSpec(module) if module.num_parameters > 1 else None
    if isinstance(module, nn.Embedding):
        return EmbeddingSpec(module)
    if _is_norm_like(module):
        return NormSpec(module)
    layout = _experts_layout(module) if isinstance(getattr(module, "down_proj", None), nn.Parameter) else None
    if layout is not None:
        return ExpertsSpec(module, *layout)
    return None


def slice_tensor(value, axis, index):
    """``value`` restricted to channels ``index`` along ``axis`` (a fresh tensor; Parameters stay Parameters)."""
    dim = axis.axis % value.dim()
    if axis.blocks > 1:
        block = value.shape[dim] // axis.blocks
        index = torch.cat([index + b * block for b in range(axis.blocks)])
    data = torch.index_select(value.detach(), dim, index.to(value.device)).contiguous()
    if isinstance(value, nn.Parameter):
        sliced = nn.Parameter(data, requires_grad=value.requires_grad)
        if value.grad is not None:
            sliced.grad = torch.index_select(value.grad, dim, index.to(value.device)).contiguous()
        return sliced
    return data


def spec_of(model, target, axis=None):
    """The :class:`LayerSpec` of module ``target`` of ``model``, or of bare parameter ``target`` when ``axis`` is
    given. Raises ``LookupError`` for an unknown name or an axis out of range and ``TypeError`` for an unsupported
    layer."""
    if axis is not None:
        holder, _, attr = target.rpartition(".")
        try:
            parent = model.get_submodule(holder) if holder else model
        except AttributeError:
            raise LookupError(f"no module '{holder}'") from None
        param = getattr(parent, attr, None)
        if not isinstance(param, nn.Parameter):
            raise LookupError(f"no parameter '{target}'")
        if not -param.dim() <= axis < param.dim():
            raise LookupError(f"parameter '{target}' has {param.dim()} dimension(s), axis {axis} is out of range")
        return ParameterSpec(parent, attr, axis)
    try:
        module = model.get_submodule(target)
    except AttributeError:
        raise LookupError(f"no module '{target}'") from None
    spec = layer_spec(module)
    if spec is None:
        raise TypeError(f"module '{target}' ({type(module).__name__}) cannot be pruned")
    return spec
