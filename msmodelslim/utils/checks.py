"""Argument checks that raise the documented errors of the original msModelSlim."""
import os
import stat

from msmodelslim.utils.logging import logger


def check_input_path(path, name="weight_file_path"):
    """Validate a path to read weights from; returns the resolved path.

    Accepted: an existing regular file or directory which neither the group nor others may write; any characters
    (spaces, non-ASCII letters: no shell is involved). Symbolic links are followed (the Hugging Face cache uses
    them). A file owned by another user is accepted with a WARNING. Every message names ``name`` and the path.

    Raises:
        TypeError: ``path`` is not a str or ``os.PathLike`` of str.
        ValueError: an empty path, a NUL byte, a missing path, something other than a regular file or directory
            (a FIFO, a device), or a group/other-writable file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be str, not {type(path).__name__}.")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"{name} must be a str path, not {type(path).__name__}.")
    if not path:
        raise ValueError(f"{name} is an empty path.")
    if "\0" in path:
        raise ValueError(f"{name} {path!r} contains a NUL byte.")
    if not os.path.exists(path):
        raise ValueError(f"{name}: the path {path} doesn't exist or not a file.")
    real = os.path.realpath(path)
    info = os.stat(real)
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise ValueError(f"{name}: {path} is neither a regular file nor a directory.")
    if stat.S_ISREG(info.st_mode) and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ValueError(f"{name}: the file {path} is group writable, or is others writable.")
    if stat.S_ISREG(info.st_mode) and info.st_uid != os.getuid() and os.getuid() != 0:
        logger.warning("%s: the file %s is owned by another user.", name, path)
    return real


def is_int(value):
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)
