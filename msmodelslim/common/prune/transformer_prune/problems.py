"""The message both backends give when a checkpoint cannot fill the small model."""

MAX_LISTED = 20


def describe_problems(path, missing, conflicts):
    """A message naming the checkpoint ``path``, the ``missing`` keys and the ``conflicts``
    (``[(key, checkpoint shape, model shape)]``), at most 20 of each."""
    parts = [f"The checkpoint {path} cannot fill the model."]
    if missing:
        parts.append(f"{len(missing)} parameter(s) would stay uninitialised: {', '.join(missing[:MAX_LISTED])}"
                     + (" ..." if len(missing) > MAX_LISTED else "") + ".")
    if conflicts:
        listed = "; ".join(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in conflicts[:MAX_LISTED])
        parts.append(f"{len(conflicts)} shape conflict(s) (key: checkpoint shape vs model shape): {listed}"
                     + (" ..." if len(conflicts) > MAX_LISTED else "") + ".")
        parts.append("Check the steps (e.g. 'prune_blocks' before the intra-block step) and the layer map.")
    return " ".join(parts)
