"""procs.ChildProcess on real child interpreters: the ready line, a child that dies or hangs, stopping."""

from __future__ import annotations

import sys

import pytest

from edgeexit.errors import ServerError
from edgeexit.procs import ChildProcess


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_ready_line_gives_the_address_and_later_waits_see_later_lines() -> None:
    code = "import sys, time; [print(l, file=sys.stderr, flush=True) for l in ('loading', 'ready: 127.0.0.1:5', 'x=1')]; time.sleep(60)"  # noqa: E501
    with ChildProcess(python(code), name="child") as child:
        assert child.wait_ready("ready: ") == "127.0.0.1:5"
        assert child.wait_for(lambda line: line.startswith("x="), "value") == "x=1"
        assert child.lines[:2] == ["loading", "ready: 127.0.0.1:5"]
    assert child.poll() is not None  # the with block stopped it


def test_a_child_that_exits_first_is_an_error_quoting_its_stderr() -> None:
    code = "import sys; print('port taken', file=sys.stderr); sys.exit(3)"
    expected = r"(?s)srv ended \(3\) before its ready line:.*port taken"
    with ChildProcess(python(code), name="srv") as child, pytest.raises(ServerError, match=expected):
        child.wait_ready("ready: ")


def test_a_child_that_never_gets_ready_times_out() -> None:
    code = "import sys, time; print('still loading', file=sys.stderr, flush=True); time.sleep(60)"
    expected = r"(?s)slow printed no ready line within 0.5 s.*still loading"
    with ChildProcess(python(code), name="slow") as child, pytest.raises(ServerError, match=expected):
        child.wait_ready("ready: ", timeout_s=0.5)


def test_stop_kills_a_child_that_ignores_sigterm() -> None:
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', file=sys.stderr, flush=True); time.sleep(60)"  # noqa: E501
    child = ChildProcess(python(code))
    child.wait_for(lambda line: line == "up", "start")
    assert child.stop(grace_s=0.5) == -9  # SIGKILL after the grace: SIGTERM alone would never end it
    assert child.stop() == -9  # idempotent
