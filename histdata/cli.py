"""The ``histdata`` command line.

Each sub-command lives in its own module exposing ``configure(parser)`` and
``main(args) -> int``; modules are imported only when their command runs, so ``histdata sim``
does not load the database driver and ``--help`` is instant. Errors histdata raises on
purpose, and files that cannot be opened, print one line and exit with status 2
(configuration and usage) or 1 (everything else); tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from histdata import __version__
from histdata.errors import ConfigError, HistdataError

__all__ = ["COMMANDS", "main"]

_DESCRIPTION = "Record Kraken market data into PostgreSQL and read it back."
_EPILOG = (
    "Run `histdata COMMAND --help` for a command's options. Exit status: 0 success, 1 failure"
    " (one line on stderr says why), 2 bad configuration or usage, 3 `gaps` found holes or"
    " `status` found the service unhealthy, 130 interrupted."
)

# name → (module, one-line help). The order is the order of `histdata --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("histdata.commands.run", "run the service (live capture, repair, rollups, socket)"),
    "import": ("histdata.commands.importer", "import Kraken CSV or ZIP history files"),
    "backfill": ("histdata.commands.backfill", "backfill trade history from REST, resumable"),
    "gaps": ("histdata.commands.gaps", "report (and --repair) holes in the stored history"),
    "candles": ("histdata.commands.read", "read candles at any interval"),
    "trades": ("histdata.commands.read", "read trades"),
    "status": ("histdata.commands.status", "show actors, restarts, channels, lag and drops"),
    "migrate": ("histdata.commands.migrate", "apply the database schema"),
    "sim": ("histdata.sim.command", "run the local Kraken simulator (REST + WebSocket v2)"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Build the parser, configuring only the sub-command named in ``argv`` (if any)."""
    parser = argparse.ArgumentParser(prog="histdata", description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"histdata {__version__}")
    parser.add_argument(
        "-c", "--config", help="config file (default: $HISTDATA_CONFIG, else ./config.toml)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((arg for arg in argv if arg in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        # Also accepted after the command (`histdata migrate -c x.toml`), as users type it.
        shown = "config file (as before COMMAND)" if name != "sim" else argparse.SUPPRESS
        command.add_argument("-c", "--config", default=argparse.SUPPRESS, help=shown)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.configure(command)
            command.set_defaults(_main=module.main, _name=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(args_list).parse_args(args_list)
    try:
        return int(args._main(args))
    except ConfigError as exc:
        print(f"histdata: {exc}", file=sys.stderr)
        return 2
    except HistdataError as exc:
        print(f"histdata {args._name}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a path that does not exist, a socket we may not open…
        print(f"histdata {args._name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"histdata {args._name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
