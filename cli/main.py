"""The `landscape` command line: parses, calls `landscape`, prints with rich.

No science lives here. A `UserError` from the library becomes one line on stderr and a
non-zero exit; anything else is a bug and keeps its traceback. Commands live in their own
modules (train, analyses, sharpness, compare, render); the options several of them share
are declared once in cli/options.py.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from cli import analyses, compare, render, reproduce, sharpness, train
from cli.common import err_console
from landscape.errors import UserError

app = typer.Typer(
    help="Train with flat-minima optimizers and measure the loss landscape around and between solutions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (train, analyses, sharpness, compare, render, reproduce):
    module.register(app)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        import landscape

        def of(package: str) -> str:
            try:
                return version(package)
            except PackageNotFoundError:
                return "not installed"

        print(f"landscape {landscape.__version__} (torch {of('torch')}, torchvision {of('torchvision')}, "
              f"python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the versions and exit")] = False) -> None:
    """Train with flat-minima optimizers and measure the loss landscape around and between solutions."""


class _NoteHandler(logging.Handler):
    """The library's notes (e.g. a key prefix stripped from a foreign checkpoint) as plain stderr lines."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(f"note: {record.getMessage()}", highlight=False, markup=False, soft_wrap=True)


def main() -> None:
    log = logging.getLogger("landscape")
    log.setLevel(logging.INFO)
    log.addHandler(_NoteHandler())
    try:
        code = app(standalone_mode=False)  # usage errors come here, to be one line like ours
    except UserError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("interrupted; finished epochs are saved, rerun with --resume to continue")
        sys.exit(130)
    except Exception as exc:
        # A command-line usage error (click's ClickException, vendored by newer typer).
        if not (hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # `landscape CMD` alone: its help, as asked
            print(exc.ctx.get_help())  # type: ignore[attr-defined]
            sys.exit(0)
        ctx = getattr(exc, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        err_console.print(f"[bold red]error:[/bold red] {exc.format_message()}{where}", highlight=False,
                          soft_wrap=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
