"""Shared CLI plumbing: error reporting, logging, consoles."""

from __future__ import annotations

import functools
import logging
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from medhdiff.errors import MedhdiffError

console = Console()
err_console = Console(stderr=True)


class State:
    debug: bool = False


state = State()


class _StderrHandler(logging.Handler):
    """``info:`` / ``warning:`` / ``error:`` lines on stderr, one line per record.

    ``label`` fixes the level word and ``prefix`` starts the message (for other
    libraries' loggers, whose messages are advice, never the command's error).
    """

    def __init__(self, label: str | None = None, prefix: str = ""):
        super().__init__()
        self.label, self.prefix = label, prefix

    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno >= logging.WARNING else "info"
        if record.levelno >= logging.ERROR:
            level = "error"
        print(f"{self.label or level}: {self.prefix}{one_line(record.getMessage())}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """Python warnings (from numpy, nibabel, ...) as one ``warning:`` line instead of two raw ones."""
    print(f"warning: {category.__name__}: {one_line(message)}", file=sys.stderr)


def _use_handler(name: str, handler: logging.Handler, level: int) -> None:
    log = logging.getLogger(name)
    for h in list(log.handlers):  # ours from an earlier call, or a library's plain stderr handler
        if isinstance(h, _StderrHandler) or type(h) is logging.StreamHandler:
            log.removeHandler(h)
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def setup_logging(debug: bool = False) -> None:
    """Route medhdiff's log, nibabel's header-fix messages and Python warnings to one-line stderr output."""
    _use_handler("medhdiff", _StderrHandler(), logging.DEBUG if debug else logging.INFO)
    # nibabel reports the header fields it repairs on its own stream handler, without a prefix
    _use_handler("nibabel.global", _StderrHandler("warning", "NIfTI header: "), logging.WARNING)
    warnings.showwarning = _show_warning


def runtime_message(exc: BaseException) -> str:
    """One line for an unexpected error, with what to change when memory ran out."""
    text = str(exc).strip()
    msg = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, MemoryError) and not text:
        msg = "out of memory"
    if "out of memory" in msg.lower():
        msg += " (lower --batch-size, or use --device cpu)"
    return f"{type(exc).__name__}: {msg}"


def one_line(message: object) -> str:
    """A message on one line (some libraries' errors span several)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def fail(message: str, code: int = 2) -> None:
    """Print one ``error:`` line on stderr and exit."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise typer.Exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one ``error:`` line and an exit code (2 input, 1 runtime)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except MedhdiffError as exc:
            if state.debug:
                traceback.print_exc()
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except MemoryError:
            if state.debug:
                traceback.print_exc()
            fail("out of memory; try a smaller --batch-size, fewer --steps or --device cpu", 1)
        except Exception as exc:  # noqa: BLE001 - last line of defence for the user
            if state.debug:
                traceback.print_exc()
            fail(f"{runtime_message(exc)} (run with --debug for the traceback)", 1)
        except BaseException as exc:  # SIGTERM turned into an exception (medhdiff_cli.signals)
            if getattr(exc, "exit_code", None) == 143:
                print(f"error: {exc}", file=sys.stderr)
                raise typer.Exit(143) from None
            raise

    return wrapper
