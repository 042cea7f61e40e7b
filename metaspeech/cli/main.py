"""The ``metaspeech`` command.

``fit``, ``validate``, ``test`` and ``predict`` are Lightning's own CLI
(:class:`~metaspeech.cli.lightning_cli.MetaSpeechCLI`): configuration is YAML, any
recognizer, algorithm or data module (including a user's, by import path) is
selected with ``class_path`` / ``init_args``. The practitioner's and housekeeping
commands (``adapt``, ``transcribe``, ``generate``, ``compare``, ``demo``) live in
:mod:`metaspeech.cli.commands`.

Exit status: 0 on success, 2 for a user-facing error (:mod:`metaspeech.errors`:
bad data, configuration or checkpoint), printed as one line without a traceback
(``--debug`` or ``METASPEECH_DEBUG=1`` shows it too, and keeps the status 2), 143 / 130 for a
run stopped cleanly by SIGTERM / SIGINT, 1 for anything else (docs/reliability.md).
"""

from __future__ import annotations

import os
import sys
import traceback

from metaspeech.cli.lightning_cli import LIGHTNING_SUBCOMMANDS, MetaSpeechCLI, RunInterrupted, build_cli
from metaspeech.errors import MetaSpeechError

__all__ = ["DEBUG_ENV", "MetaSpeechCLI", "build_cli", "main", "usage"]

DEBUG_ENV = "METASPEECH_DEBUG"


def usage() -> str:
    """The top-level help: every subcommand with one line."""
    from metaspeech.cli.commands import COMMANDS, summary

    width = max(len(name) for name in [*LIGHTNING_SUBCOMMANDS, *COMMANDS]) + 2
    lines = ["usage: metaspeech <command> [options]   (metaspeech <command> --help for its options)", "",
             "Meta-learning for fast speaker adaptation of speech recognizers.", "",
             "training and evaluation (Lightning CLI, YAML configs):"]
    lines += [f"  {name:<{width}}{text}" for name, text in LIGHTNING_SUBCOMMANDS.items()]
    lines += ["", "using a trained model, data and experiments:"]
    lines += [f"  {name:<{width}}{summary(name)}" for name in COMMANDS]
    lines += ["", "options:", f"  {'--debug':<{width}}show the traceback of data and configuration errors (or {DEBUG_ENV}=1)",
              f"  {'--help':<{width}}show this message"]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``metaspeech`` console script; returns the exit status."""
    argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
    if "--debug" in argv:
        os.environ[DEBUG_ENV] = "1"  # inherited by the processes a DDP launcher starts
        argv = [a for a in argv if a != "--debug"]
        if args is None:
            sys.argv = [sys.argv[0], *argv]
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    try:
        if argv[0] in LIGHTNING_SUBCOMMANDS:
            # From the console script LightningCLI reads sys.argv itself: Lightning's DDP launcher starts
            # the other ranks by re-running sys.argv, so it must stay the real command line.
            build_cli(None if args is None else argv)
            return 0
        from metaspeech.cli.commands import run_command

        return run_command(argv)
    except MetaSpeechError as err:
        if debug:
            traceback.print_exc()
        print(f"metaspeech {argv[0]}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as stop:
        print(f"metaspeech {argv[0]}: {stop}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"metaspeech {argv[0]}: interrupted (runs that finished keep their files)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
