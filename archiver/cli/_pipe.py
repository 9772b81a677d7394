"""A reader of stdout that goes away (``exotel-archiver retention plan | head -1``).

What a command prints is for its reader; once the reader is gone, the rest is dropped, quietly.
The command itself goes on: it finishes its work, writes its ``--report``, records its run and
exits with its own code — 1 when calls failed, whatever became of its output. Exiting 0 at the
first closed pipe would turn ``archive ... | head -1`` with a failed call into a success.

``guard_streams()`` puts a ``DropWhenClosed`` in front of ``sys.stdout`` and ``sys.stderr``
for that. Should a
``BrokenPipeError`` escape anyway (a write that bypassed it), ``closed_pipe(code)`` ends the
command quietly with ``code``: 0 while parsing (``--help`` is all that was asked for), 1 once the
command had started (it stopped before it finished).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO


class DropWhenClosed:
    """``stream``, but once its reader has gone a write or flush is dropped instead of raising
    ``BrokenPipeError``; the file descriptor then points at /dev/null, so the interpreter's own
    flush at exit does not raise either."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.reader_gone = True
        _to_devnull(self._stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_streams() -> None:
    """Put ``DropWhenClosed`` in front of ``sys.stdout`` and ``sys.stderr`` (once each):
    ``2>&1 | head -1`` closes stderr's pipe too. A stream closed before the start (``2>&-``:
    Python makes it None) becomes /dev/null: the command runs, and says nothing there."""
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    if not isinstance(sys.stdout, DropWhenClosed):
        sys.stdout = DropWhenClosed(sys.stdout)
    if not isinstance(sys.stderr, DropWhenClosed):
        sys.stderr = DropWhenClosed(sys.stderr)


@contextlib.contextmanager
def closed_pipe(code: int) -> Iterator[None]:
    """A ``BrokenPipeError`` that escaped ``DropWhenClosed`` ends the command with ``code``,
    quietly."""
    try:
        yield
    except BrokenPipeError:
        _to_devnull(sys.stdout)
        sys.exit(code)


def _to_devnull(stream: Any) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
