"""The PyTorch side of the coupled-group layout: which ``(key, axis)`` of a module holds its input or output
channels (read from the layer kinds PruneTorch knows, so Conv1D, Linear and norms alike), a layer's head size, and
the axes that may hold hidden channels. The groups themselves come from the one framework-free description,
:func:`msmodelslim.common.structure.layout.build_layout`.
"""
from msmodelslim.common.structure import layout as shared
from msmodelslim.pytorch.prune.layers import INPUT, OUTPUT, layer_spec
from msmodelslim.pytorch.prune.structure import head_size

ROLES = {shared.IN: INPUT, shared.OUT: OUTPUT}


def _param_axes(module_name, module, role):
    """``[(key, axis)]`` of a module's parameters holding ``role``'s channels (``INPUT``/``OUTPUT``)."""
    spec = layer_spec(module)
    if spec is None or role not in spec.roles():
        return []
    return [(f"{module_name}.{a.tensor}", a.axis % getattr(module, a.tensor).dim())
            for a in spec.roles()[role] if getattr(module, a.tensor, None) is not None]


def _hidden_candidates(modules):
    """``hidden_candidates(hidden)``: every role of a known layer with the hidden size, and the last axis of a
    bare parameter (a position embedding, a class token) of that size, in the model's order."""

    def candidates(hidden):
        found = []
        for name, module in modules.items():
            spec = layer_spec(module)
            if spec is not None:
                for role in spec.roles():
                    if spec.size(role) == hidden:
                        found += _param_axes(name, module, role)
            else:
                for pname, param in module.named_parameters(recurse=False):
                    if param.dim() and param.shape[-1] == hidden:
                        found.append((f"{name}.{pname}" if name else pname, param.dim() - 1))
        return found

    return candidates


def build_layout(model, family, layers, big_shape_of):
    """The :class:`~msmodelslim.common.structure.layout.Layout` of ``model`` against checkpoint shapes
    ``big_shape_of(key)`` (None when absent).

    Raises:
        ValueError: the checkpoint's head sizes are not consistent with the model.
    """
    modules = dict(model.named_modules())
    small_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return shared.build_layout(
        family, layers, small_shapes, big_shape_of,
        axes_of=lambda path, role: _param_axes(path, modules[path], ROLES[role]),
        head_dim_of=lambda prefix: head_size(model, family, prefix),
        hidden_candidates=_hidden_candidates(modules))
