"""The ``msmodelslim`` logger and :func:`set_logger_level`.

Behaves like the original: one ``StreamHandler`` with the format
``'%(asctime)s - %(name)s - %(levelname)s - %(message)s'``, no propagation to the root logger, INFO by default,
control characters scrubbed from messages, and non-DEBUG records emitted by rank 0 only when ``torch.distributed``
is initialised.
"""
import logging
import re
import sys

from msmodelslim.errors import SchemaValidateError

LOGGER_NAME = "msmodelslim"
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"

LEVELS = {
    "notset": logging.NOTSET,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.FATAL,
    "critical": logging.CRITICAL,
}

# Control characters and their URL-encoded forms (%0a, %0D, ...) could forge log lines; they become spaces.
_CONTROL = re.compile(r"[\n\r\t\b\f\v\x7f]|%0[aAdD9bBcC8]|%7[fF]")


def scrub(text):
    """Return ``text`` with line breaks, tabs and other control characters replaced by spaces."""
    return _CONTROL.sub(" ", text)


class _ScrubFilter(logging.Filter):
    def filter(self, record):
        record.msg = scrub(record.getMessage())
        record.args = None
        return True


class _RankZeroFilter(logging.Filter):
    """Keep non-DEBUG records on rank 0 only, when torch.distributed is initialised."""

    def filter(self, record):
        if record.levelno <= logging.DEBUG:
            return True
        dist = sys.modules.get("torch.distributed")  # never import torch just to log
        if dist is None or not dist.is_available() or not dist.is_initialized():
            return True
        return dist.get_rank() == 0


def _build_logger():
    log = logging.getLogger(LOGGER_NAME)
    if not getattr(log, "_msmodelslim_configured", False):
        log.propagate = False
        log.setLevel(logging.INFO)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        log.addHandler(handler)
        log.addFilter(_ScrubFilter())
        log.addFilter(_RankZeroFilter())
        log._msmodelslim_configured = True
    return log


logger = _build_logger()


def set_logger_level(level="info"):
    """Set the level of the ``msmodelslim`` logger.

    ``level`` is one of ``notset, debug, info, warn, warning, error, fatal, critical`` (case-insensitive).
    An unknown name logs a warning and leaves the level unchanged.

    Raises:
        SchemaValidateError: ``level`` is not a str (also a ``TypeError``).
    """
    if not isinstance(level, str):
        raise SchemaValidateError(f"level must be str, not {type(level).__name__}.")
    value = LEVELS.get(level.lower())
    if value is None:
        logger.warning("Set '%s' log level failed.", level)
        return
    logger.setLevel(value)
