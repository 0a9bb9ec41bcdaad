"""Argument checks that raise the documented errors of the original msModelSlim."""
import os
import re
import stat

from msmodelslim.utils.logging import logger

_PATH_CHARS = re.compile(r"^[_A-Za-z0-9/.\-]+$")


def check_input_path(path, name="weight_file_path"):
    """Validate a path to read weights from, as the original did; returns the resolved path.

    Accepted: an existing file or directory, whose name uses ``[_A-Za-z0-9/.-]`` only and which neither the group
    nor others may write. Symbolic links are followed (the Hugging Face cache uses them).

    Raises:
        TypeError: ``path`` is not a str.
        ValueError: invalid characters, a missing path, or a group/other-writable file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be str, not {type(path).__name__}.")
    path = os.fspath(path)
    if not path or not _PATH_CHARS.match(path):
        raise ValueError("Input path contains invalid characters.")
    if not os.path.exists(path):
        raise ValueError(f"The path {path} doesn't exist or not a file.")
    real = os.path.realpath(path)
    info = os.stat(real)
    if os.path.isfile(real) and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ValueError(f"The file {path} is group writable, or is others writable.")
    if os.path.isfile(real) and info.st_uid != os.getuid() and os.getuid() != 0:
        logger.warning("The file %s is owned by another user.", path)
    return real


def is_int(value):
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)
