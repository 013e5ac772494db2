"""The ``vafusion`` command: parses flags, calls the library, prints. No logic of its own.

Commands live by stage: :mod:`.data` (synth, extract, merge-features), :mod:`.train` (demo, cv, config,
finetune-face), :mod:`.infer` (predict, submit) and :mod:`.export`; shared flags are in :mod:`.common`.
Bad input (``VafusionError``) prints one line on stderr and exits with code 2; ``--verbose`` adds the
traceback. Every command accepts ``--config NAME|FILE`` and ``--set key=value`` for experiment settings.
"""

from __future__ import annotations

import argparse
import errno
import sys
import traceback

from vafusion.cli import data, export, infer, train
from vafusion.cli.common import Parser
from vafusion.errors import VafusionError
from vafusion.io.atomic import MADE, remove_made_if_empty

EPILOG = "Configuration keys: `vafusion config --show` prints every key with its default."


def build_parser() -> argparse.ArgumentParser:
    """The ``vafusion`` argument parser (exposed for docs and tests)."""
    parser = Parser(
        prog="vafusion",
        description="Per-frame valence/arousal from video: face + voice fusion (multi-scale TCNs, "
        "cross-modal attention), Aff-Wild2 / ABAW VA protocol.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train.add_parsers(sub)
    data.add_parsers(sub)
    infer.add_parsers(sub)
    export.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vafusion`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    MADE.clear()
    try:
        code = _run(args)
    except KeyboardInterrupt:
        hint = " with --resume" if getattr(args, "resume", None) is False else ""
        print(
            f"vafusion: interrupted; rerun the same command{hint} to continue (finished work is kept)",
            file=sys.stderr,
        )
        return 130
    if code:  # a failed command (an error, or e.g. predict with no readable video) leaves no empty folder
        remove_made_if_empty()
    return code


def _run(args: argparse.Namespace) -> int:
    """Run the command; bad input and a full or locked disk are one line on stderr and exit code 2."""
    try:
        return int(args.func(args) or 0)
    except VafusionError as exc:
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"vafusion: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write outside vafusion's own (a library's log file) on a full or locked disk
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        fix = "free space or write elsewhere (finished files are kept)"
        print(f"vafusion: error: {exc.strerror}{where}; {fix}", file=sys.stderr)
        return 2
