"""Shared CLI plumbing: error reporting, logging, consoles."""

from __future__ import annotations

import functools
import logging
import sys
import traceback
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
    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno >= logging.WARNING else "info"
        if record.levelno >= logging.ERROR:
            level = "error"
        print(f"{level}: {record.getMessage()}", file=sys.stderr)


def setup_logging(debug: bool = False) -> None:
    log = logging.getLogger("medhdiff")
    for h in list(log.handlers):
        if isinstance(h, _StderrHandler):
            log.removeHandler(h)
    log.addHandler(_StderrHandler())
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False


def runtime_message(exc: BaseException) -> str:
    """One line for an unexpected error, with what to change when memory ran out."""
    text = str(exc).strip()
    msg = text.splitlines()[0] if text else type(exc).__name__
    if "out of memory" in msg.lower():
        msg += " (lower --batch-size, or use --device cpu)"
    return f"{type(exc).__name__}: {msg}"


def fail(message: str, code: int = 2) -> None:
    """Print one ``error:`` line on stderr and exit."""
    print(f"error: {message}", file=sys.stderr)
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
        except BaseException as exc:  # SIGTERM turned into an exception by the batch runner
            if getattr(exc, "exit_code", None) == 143:
                print(f"error: {exc}", file=sys.stderr)
                raise typer.Exit(143) from None
            raise
        except MemoryError:
            if state.debug:
                traceback.print_exc()
            fail("out of memory; try a smaller --batch-size, fewer --steps or --device cpu", 1)
        except Exception as exc:  # noqa: BLE001 - last line of defence for the user
            if state.debug:
                traceback.print_exc()
            fail(f"{runtime_message(exc)} (run with --debug for the traceback)", 1)

    return wrapper
