"""The ``cnnzoo`` command line: a thin dispatcher.

Each area of the library owns its subcommands: a module with ``register(subparsers)`` that adds them and sets
``func(args) -> int`` on each. Errors become one line on stderr (``error: ...``), never a traceback.

Exit status (the README's table): 0 done; 1 a file could not be read or written (disk full, permissions); 2 a user
error (:class:`CnnzooError`, and argparse's usage errors); 3 a non-finite loss stopped training; 130 / 143 stopped by
SIGINT / SIGTERM (128 + the signal number, the shell's convention), with the run's checkpoint saved.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cnnzoo.errors import CnnzooError, shown

# Module -> the subcommands it adds (listed here so `cnnzoo --help` reads like a table of contents).
COMMAND_MODULES = {
    "cnnzoo.analysis.inspect": "models, summary",
    "cnnzoo.data.cli": "data",
    "cnnzoo.train.cli": "train, eval, predict, export, recipes",
    "cnnzoo.train.curves": "curves",
    "cnnzoo.analysis.compare": "compare",
    "cnnzoo.analysis.study": "study",
    "cnnzoo.analysis.show": "show",
}


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with a usage error as one ``error:`` line (exit 2) like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        raise CnnzooError(f"{self.prog}: {message.splitlines()[0] if message else 'bad arguments'} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand."""
    from cnnzoo import __version__

    parser = _Parser(
        prog="cnnzoo", description="The classic CNNs built from their papers: create, inspect, train, compare, study."
    )
    parser.add_argument("--version", action="version", version=f"cnnzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cnnzoo`` console script; returns the exit status."""
    for stream in (sys.stdout, sys.stderr):  # a path that is not UTF-8 prints as \xNN escapes, never a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except CnnzooError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cnnzoo models | head`
        return 0
    except UnicodeError as e:  # text that must be UTF-8 (a path stored in a file) and is not
        print(f"error: a name or path that is not valid UTF-8 where text is needed ({shown(str(e))})", file=sys.stderr)
        return 2
    except OSError as e:  # the disk, not the input: a full disk, a folder without write permission
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
