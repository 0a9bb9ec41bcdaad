"""MindSpore backends of the framework-neutral front doors in ``msmodelslim.common`` (imported only when a
MindSpore ``nn.Cell`` is given to them)."""
