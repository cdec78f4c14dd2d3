"""SIGTERM as an exception, so that a terminated command cleans up exactly like an interrupted one."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(BaseException):
    """SIGTERM arrived; outputs are written atomically so nothing partial remains.

    A BaseException, so that no ``except Exception`` on the way (readers, per-case
    handlers) can turn it into an ordinary failed case.
    """

    exit_code = 143


@contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """Raise :class:`Terminated` in the main thread when SIGTERM arrives (the previous handler is restored)."""

    def handler(signum, frame):  # noqa: ARG001
        raise Terminated("terminated by SIGTERM; no partial output was left")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
