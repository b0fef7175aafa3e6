"""The `landscape` command line: parses, calls `landscape`, prints with rich.

No science lives here. A `UserError` from the library becomes one line on stderr and a
non-zero exit (2); so do the machine's own limits, wherever they strike: a file that cannot
be written (full disk, read-only, no permission), memory running out (exit 1). Ctrl-C prints
what was kept and how to go on (exit 130). Anything else is a bug and keeps its traceback.
Every message prints user text literally (no rich markup, no emoji codes). Commands live in
their own modules (train, analyses, sharpness, compare, render, reproduce); the options several of
them share are declared once in cli/options.py.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from cli import analyses, compare, render, reproduce, sharpness, train
from cli.common import err_console, error_line, interrupt_message
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
        kind = "warning" if record.levelno >= logging.WARNING else "note"
        err_console.print(f"{kind}: {' '.join(record.getMessage().split())}")


def main() -> None:
    log = logging.getLogger("landscape")
    log.setLevel(logging.INFO)
    log.addHandler(_NoteHandler())
    try:
        code = app(standalone_mode=False)  # usage errors come here, to be one line like ours
    except UserError as exc:
        err_console.print(error_line(str(exc)))
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print(interrupt_message())
        sys.exit(130)
    except MemoryError:
        err_console.print(error_line("out of memory; use fewer points, a smaller --batch-size or --subset"))
        sys.exit(1)
    except OSError as exc:
        # A write the library did not expect to fail (each known one is a UserError already).
        where = f" ({exc.filename})" if exc.filename else ""
        err_console.print(error_line(f"{exc.strerror or exc}{where}"))
        sys.exit(1)
    except Exception as exc:
        # A command-line usage error (click's ClickException, vendored by newer typer).
        if not (hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # `landscape CMD` alone: its help, as asked
            print(exc.ctx.get_help())  # type: ignore[attr-defined]
            sys.exit(0)
        ctx = getattr(exc, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        err_console.print(error_line(f"{exc.format_message()}{where}"))
        sys.exit(exc.exit_code)
    if code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into a silent exit code 130
        err_console.print(interrupt_message())
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
