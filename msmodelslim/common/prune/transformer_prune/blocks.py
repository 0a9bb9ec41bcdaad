"""``prune_blocks``: keep, drop, reorder and duplicate layer blocks by renaming checkpoint keys."""
import re

MAX_KEY_LENGTH = 512


def rename_blocks(entries, blocks_params):
    """Apply each ``{"pattern", "layer_id_map"}`` pass to the keys of ``entries`` (key -> Entry).

    ``layer_id_map`` maps a small-model layer id to a checkpoint layer id. A key the pattern matches (anchored at
    the start) is emitted once per small layer mapped to its layer id, with the id replaced, and dropped when no
    small layer maps to it; a key it does not match is kept. Returns the new mapping.

    Raises:
        ValueError: a key longer than 512 characters.
    """
    for params in blocks_params:
        pattern = re.compile(params["pattern"])
        targets = {}
        for new_id, old_id in params["layer_id_map"].items():
            targets.setdefault(str(old_id), []).append(str(new_id))
        renamed = {}
        for key, entry in entries.items():
            if len(key) > MAX_KEY_LENGTH:
                raise ValueError(f"Checkpoint key longer than {MAX_KEY_LENGTH} characters: {key[:80]}...")
            match = pattern.match(key)
            if match is None:
                renamed[key] = entry
                continue
            for new_id in targets.get(match.group(1), ()):
                renamed[key[: match.start(1)] + new_id + key[match.end(1):]] = entry
        entries = renamed
    return entries

