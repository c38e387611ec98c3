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
    """Entry point: user-facing errors become one line on stderr and exit status 2."""
    try:
        app(standalone_mode=False)
    except CmmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click's usage errors carry their own exit code
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        raise
