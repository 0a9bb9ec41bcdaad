"""``msmodelslim``: the command-line entry point.

Exit codes: 0 success; 2 a mistake in the command (one line on stderr); 1 an internal failure. ``--verbose``
prints the traceback. Output directories are written only when a job succeeds.
"""
import argparse
import os
import sys
import traceback

from msmodelslim.cli.common import UsageError

USER_ERRORS = (UsageError, FileNotFoundError)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser():
    from msmodelslim.cli import demo, prune, prune_transformer, sparse

    parser = _Parser(prog="msmodelslim", description="Make trained PyTorch models smaller and faster.")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in (sparse, prune_transformer, prune, demo):
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


def main(argv=None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    from msmodelslim import set_logger_level

    set_logger_level("debug" if args.verbose else "info")
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("msmodelslim: interrupted", file=sys.stderr)
        return 130
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
