"""What the CLI tests share: the check that a refused command printed one clean error line."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest


def _one_error(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def one_error() -> Callable[..., str]:
    """``one_error(done, *fragments)``: the process exited 1 with one ``error:`` line on stderr (no
    traceback) holding every fragment; returns that line."""
    return _one_error
