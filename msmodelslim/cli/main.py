"""``msmodelslim``: the command-line entry point.

Exit codes: 0 success; 2 a mistake in the command or an unusable input (one line on stderr); 1 an internal
failure; 130 interrupted by SIGINT (Ctrl-C); 143 stopped by SIGTERM. ``--verbose`` prints the traceback and the
dependencies' logs. Output directories are written only when a job succeeds (see ``msmodelslim.cli.output``).
"""
import argparse
import contextlib
import os
import signal
import sys
import traceback

from msmodelslim.cli.common import UsageError

USER_ERRORS = (UsageError, FileNotFoundError)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser():
    from msmodelslim.cli import demo, prune, prune_transformer, slim, sparse

    parser = _Parser(prog="msmodelslim", description="Make trained PyTorch models smaller and faster.")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in (sparse, prune_transformer, prune, slim, demo):
        module.add_parser(subparsers)
    return parser


def _is_user_error(exc):
    from msmodelslim.errors import ModelslimError

    if isinstance(exc, USER_ERRORS):
        return True
    # the library's own validation of what the user gave (bad checkpoint, shapes that do not fit ...)
    return isinstance(exc, ModelslimError) or (isinstance(exc, (ValueError, TypeError)) and _raised_by_us(exc))


def _raised_by_us(exc):
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and f"{os.sep}msmodelslim{os.sep}" in frames[-1].filename


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every clean-up (staging directories, restores) runs."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _quiet_dependencies(verbose):
    """Keep transformers' and the hub's progress bars and INFO logs from burying the final error line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:  # already imported (the CLI called from Python)
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()


def main(argv=None):
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_dependencies(args.verbose)
    from msmodelslim import set_logger_level

    set_logger_level("debug" if args.verbose else "info")
    try:
        with _sigterm_as_interrupt():
            args.run(args)
    except KeyboardInterrupt as exc:
        stopped_by = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        written = getattr(exc, "result_written", None)
        outcome = f"the result had just been written to {written}" if written else "nothing was written"
        hint = getattr(exc, "resume_hint", None)
        print(f"msmodelslim: {stopped_by}; {outcome}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:  # every failure ends in one line and an exit code
        if args.verbose:
            traceback.print_exc()
        message = str(exc).replace("\n", " ")
        if _is_user_error(exc):
            print(f"msmodelslim {args.command}: error: {message}", file=sys.stderr)
            return 2
        print(f"msmodelslim {args.command}: internal error ({type(exc).__name__}): {message} "
              f"(run with --verbose for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
