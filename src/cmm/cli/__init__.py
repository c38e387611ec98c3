"""The ``cmm`` command line. Each pipeline stage registers its own sub-commands."""

from __future__ import annotations

import sys

import typer

from cmm.errors import CmmError

app = typer.Typer(
    name="cmm",
    help="Cooperative Market Making: distil an order-book LLM into fast experts and backtest "
    "them on real exchange data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_all() -> None:
    # Each module only declares its commands; heavy imports happen inside the commands.
    from cmm.cli import backtest, data, distill, rl, run, teacher

    for module in (data, backtest, teacher, distill, rl, run):
        module.register(app)


_register_all()


def main() -> None:
    """Entry point, with one error path. Errors a user can act on (CmmError: bad input, a
    missing or corrupt artefact) and OS errors (disk full, read-only folder: the path and the
    errno's name) are one line on stderr and exit status 2; click's usage errors keep their
    own message and status; anything else is a bug of cmm: its traceback, then a line asking
    for a report, and exit status 1."""
    try:
        app(standalone_mode=False)
    except CmmError as exc:
        _fail(f"error: {exc}")
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - sorted below; bugs are re-shown, not hidden
        import click

        if isinstance(exc, click.exceptions.ClickException):  # usage errors: their own code
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        from cmm.errors import ISSUE_TRACKER, describe_os_error, os_error

        located = os_error(exc)
        if located is not None:
            _fail(f"error: {describe_os_error(located)}")
        import traceback

        traceback.print_exc()
        print(f"internal error: this is a bug in cmm, not a problem with your input; please "
              f"report it on {ISSUE_TRACKER}", file=sys.stderr)
        sys.exit(1)


def _fail(line: str) -> None:
    print(" ".join(line.split("\n")), file=sys.stderr)  # one line, whatever the message holds
    sys.exit(2)
