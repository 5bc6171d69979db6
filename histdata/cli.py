"""The ``histdata`` command line.

Each sub-command lives in its own module exposing ``configure(parser)`` and
``main(args) -> int``; modules are imported only when their command runs, so ``histdata sim``
does not load the database driver and ``--help`` is instant. Errors histdata raises on
purpose, and files that cannot be opened, print one line; tracebacks are for bugs.

Exit statuses, the same in every command: 0 success; 1 failure; 2 usage or configuration
(an unknown symbol included); 3 holes found (``gaps``) or the service unhealthy
(``status``); 130 interrupted. A reader that closes the pipe early (``| head``) is no
failure: the command stops quietly with 0. Shell completion comes from argcomplete (see
the README for the line to add to ``~/.bashrc`` or ``~/.zshrc``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Iterator, Sequence

import argcomplete

from histdata import __version__
from histdata.errors import ConfigError, HistdataError, UnknownSymbol

__all__ = ["COMMANDS", "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_USAGE", "main"]

EXIT_FAILURE = 1
EXIT_USAGE = 2  # argparse's own status for bad arguments; configuration errors share it
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a job stopped by Ctrl-C

_DESCRIPTION = "Record Kraken market data into PostgreSQL and read it back."
_EPILOG = (
    "Run `histdata COMMAND --help` for a command's options. Exit status: 0 success, 1 failure"
    " (one line on stderr says why), 2 bad configuration or usage (an unknown symbol"
    " included), 3 `gaps` found holes or `status` found the service unhealthy, 130"
    " interrupted."
)
_VERBOSE_HELP = "more log lines on stderr: -v info, -vv debug (one-shot commands: warnings only)"

# name → (module, one-line help). The order is the order of `histdata --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("histdata.commands.run", "run the service (live capture, repair, rollups, socket)"),
    "import": ("histdata.commands.import_", "import Kraken CSV or ZIP history files"),
    "backfill": ("histdata.commands.backfill", "backfill trade history from REST, resumable"),
    "gaps": ("histdata.commands.gaps", "report (and --repair) holes in the stored history"),
    "candles": ("histdata.commands.read", "read candles at any interval"),
    "trades": ("histdata.commands.read", "read trades"),
    "export": (
        "histdata.commands.export",
        "write candles or trades to parquet, feather or csv files (or freqtrade's layout)",
    ),
    "status": ("histdata.commands.status", "show actors, restarts, channels, lag and drops"),
    "symbols": (
        "histdata.commands.symbols",
        "list what is stored per symbol (--refresh: AssetPairs)",
    ),
    "serve": (
        "histdata.commands.serve",
        "serve reads alone (no writes): replicas, read-only users",
    ),
    "migrate": ("histdata.commands.migrate", "apply the database schema"),
    "sim": ("histdata.commands.sim", "run the local Kraken simulator (REST + WebSocket v2)"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Build the parser, configuring only the sub-command named in ``argv`` (if any)."""
    parser = argparse.ArgumentParser(prog="histdata", description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"histdata {__version__}")
    parser.add_argument(
        "-c", "--config", help="config file (default: $HISTDATA_CONFIG, else ./config.toml)"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((arg for arg in argv if arg in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        # Also accepted after the command (`histdata migrate -c x.toml`), as users type it.
        shown = "config file (as before COMMAND)" if name != "sim" else argparse.SUPPRESS
        command.add_argument("-c", "--config", default=argparse.SUPPRESS, help=shown)
        if name != "sim":
            command.add_argument(
                "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=_VERBOSE_HELP
            )
        if name == chosen:
            module = importlib.import_module(module_name)
            module.configure(command)
            command.set_defaults(_main=module.main, _name=name)
    return parser


def _words(argv: Sequence[str]) -> list[str]:
    """The words to configure the parser by: ``argv``, or the line being completed."""
    if "_ARGCOMPLETE" in os.environ:
        line = os.environ.get("COMP_LINE", "")[: int(os.environ.get("COMP_POINT", "0") or 0)]
        try:
            return shlex.split(line)[1:]
        except ValueError:  # an unclosed quote while typing
            return line.split()[1:]
    return list(argv)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions an exception group is made of (``exc`` itself when it is none)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _status_of(exc: BaseException) -> int | None:
    """The exit status for an error histdata expects; None for anything else (a bug)."""
    if isinstance(exc, BrokenPipeError):
        return 0
    if isinstance(exc, ConfigError | UnknownSymbol):
        return EXIT_USAGE
    if isinstance(exc, HistdataError | OSError):  # OSError: a path or socket we may not open
        return EXIT_FAILURE
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return None


def _report(exc: BaseException, command: str) -> None:
    """Say in one line on stderr what went wrong (nothing for a closed pipe)."""
    if isinstance(exc, BrokenPipeError):
        # The reader went away (`| head`): nothing more to say, and nobody left to say it to.
        # stdout is pointed at /dev/null so the interpreter's final flush stays quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    elif isinstance(exc, ConfigError):
        print(f"histdata: {exc}", file=sys.stderr)
    elif isinstance(exc, KeyboardInterrupt):
        print(f"histdata {command}: interrupted", file=sys.stderr)
    else:
        print(f"histdata {command}: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status.

    An exception group (from a nursery) made only of errors histdata expects is reported as
    its first member; anything else propagates with its traceback.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_words(args_list))
    argcomplete.autocomplete(parser)
    args = parser.parse_args(args_list)
    try:
        return int(args._main(args))
    except (Exception, KeyboardInterrupt, BaseExceptionGroup) as exc:
        leaves = list(_leaves(exc))
        statuses = [_status_of(leaf) for leaf in leaves]
        first = statuses[0] if statuses else None
        if first is None or None in statuses:
            raise
        _report(leaves[0], args._name)
        return first


if __name__ == "__main__":
    sys.exit(main())
