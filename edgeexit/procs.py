"""A child process that announces itself on stderr: start it, wait for its ready line, stop it.

``edgeexit serve`` and the device daemon each print one ready line (their ``READY_PREFIX`` and
the address they bound, port 0 resolved) once they listen. The demo, the benchmarks and the
tests all start them the same way, so that way lives here once: stderr is read to the end on a
thread (a full pipe would block the child), lines are handed out in order to whoever waits for
one, the last ones are kept for the error that says why a child never got ready, and the child
is stopped (SIGTERM, then SIGKILL) when the ``with`` block ends, pass or fail.

Standard library only (plus ``edgeexit.errors``): the device side uses it too.
"""

from __future__ import annotations

import collections
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from edgeexit.errors import ServerError

#: The line ``edgeexit serve`` prints once it listens, followed by HOST:PORT (the real port when it
#: was asked for port 0). Defined here, not in the command's module, because the library starts the
#: server too (``edgeexit.device.comparison``) and the library never imports the CLI; the daemon's
#: own line is ``edgeexit.daemon.app.READY_PREFIX``.
SERVE_READY_PREFIX = "edgeexit serve: listening on "
#: How long a server may take to print its ready line: loading a package and its ONNX Runtime
#: sessions takes seconds, much more on a loaded 2-core machine.
START_TIMEOUT_S = 120.0
#: Seconds a child gets to drain after SIGTERM before it is killed.
STOP_GRACE_S = 15.0
#: How much of stderr an error quotes.
TAIL_CHARS = 2000


class ChildProcess:
    """``command`` as a child process whose stderr lines a thread reads as they come.

    ``lines`` holds the lines read so far (newline stripped; the last ``keep_lines``); the
    ``wait_*`` methods consume them in order, so a later wait sees only what came after the
    line an earlier one returned. stdin and stdout are closed to the child: everything it has to
    say goes to stderr. ``name`` names the child in errors; ``on_line``, when given, also gets
    every line as it is read (on the reader thread).
    """

    def __init__(
        self,
        command: Sequence[str | Path],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        name: str | None = None,
        keep_lines: int = 10_000,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.command = [str(part) for part in command]
        self.name = name or " ".join(self.command)
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=None if env is None else dict(env),
            cwd=cwd,
        )
        self._kept: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._kept_lock = threading.Lock()  # copying a deque while the reader appends would fail
        self._on_line = on_line  # called on the reader thread with each line (a supervisor forwards them)
        self._unread: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        self._reader = threading.Thread(target=self._read, name=f"stderr of {self.proc.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        for line in stream:
            line = line.rstrip("\n")
            with self._kept_lock:
                self._kept.append(line)
            self._unread.put(line)
            if self._on_line is not None:
                self._on_line(line)
        self._unread.put(None)

    # ---------------------------------------------------------------- reading

    @property
    def lines(self) -> list[str]:
        """The stderr lines read so far (the last ``keep_lines`` of them)."""
        with self._kept_lock:
            return list(self._kept)

    def text(self) -> str:
        """What the child has printed so far, one line each."""
        return "".join(f"{line}\n" for line in self.lines)

    def tail(self, chars: int = TAIL_CHARS) -> str:
        return self.text()[-chars:]

    def wait_for(self, predicate: Callable[[str], bool], what: str, *, timeout_s: float = START_TIMEOUT_S) -> str:
        """The next line ``predicate`` accepts. ServerError (quoting stderr's tail) when the child
        ends first or no such line comes within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = None if self._ended else self._unread.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise ServerError(
                    f"{self.name} printed no {what} within {timeout_s:g} s; stderr so far:\n{self.tail()}"
                ) from None
            if line is None:
                self._ended = True
                raise ServerError(f"{self.name} ended ({self.proc.wait()}) before its {what}:\n{self.tail()}")
            if predicate(line):
                return line

    def wait_ready(self, prefix: str, *, timeout_s: float = START_TIMEOUT_S) -> str:
        """The rest of the ready line that starts with ``prefix`` (the address, for edgeexit's servers)."""
        line = self.wait_for(lambda text: text.startswith(prefix), "ready line", timeout_s=timeout_s)
        return line.removeprefix(prefix).strip()

    # ---------------------------------------------------------------- lifetime

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit and its stderr to be read to the end; its exit status."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def stop(self, grace_s: float = STOP_GRACE_S) -> int:
        """SIGTERM (a server drains), SIGKILL after ``grace_s``; the exit status. Idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.wait(timeout=30)

    def kill(self) -> int:
        """SIGKILL at once: no drain."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.wait(timeout=30)

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ChildProcess({self.name!r}, pid={self.proc.pid})"


__all__ = ["SERVE_READY_PREFIX", "START_TIMEOUT_S", "ChildProcess"]
