"""The error hierarchy is a contract: one module, every public class exported, branches a caller can catch."""

from __future__ import annotations

import ast
from pathlib import Path

import grpc
import pytest

import edgeexit
from edgeexit import errors
from edgeexit.errors import (
    ConfigError,
    EdgeExitError,
    OffloadError,
    OffloadRejected,
    OffloadTimeout,
    RequestError,
    ServerUnavailable,
    UnknownNameError,
    UsageError,
)
from edgeexit.registry import Registry

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "edgeexit"


def test_every_error_is_exported_from_edgeexit() -> None:
    for name in errors.__all__:
        assert getattr(edgeexit, name) is getattr(errors, name), name
        assert name in edgeexit.__all__, name
        assert issubclass(getattr(errors, name), EdgeExitError), name


def test_no_module_but_errors_defines_an_exception() -> None:
    """Error classes live in one module, so a caller finds every branch in one place."""
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if (path.name == "errors.py" and path.parent == PACKAGE_DIR) or "generated" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(base, "id", getattr(base, "attr", "")) for base in node.bases}
                if any(base.endswith(("Error", "Exception")) or base in errors.__all__ for base in bases):
                    found.append(f"{path.relative_to(PACKAGE_DIR)}:{node.lineno} {node.name}")
    assert found == []


def test_unknown_names_are_usage_errors_and_lookup_errors() -> None:
    registry: Registry[int] = Registry("codec")
    registry.register("fp16")(1)
    with pytest.raises(LookupError, match=r"unknown codec 'fp8'; expected one of: fp16") as caught:
        registry.get("fp8")
    assert isinstance(caught.value, UnknownNameError)
    assert isinstance(caught.value, UsageError)
    assert issubclass(ConfigError, UsageError)


def test_offload_branches_keep_what_the_attempt_cost() -> None:
    for kind in (OffloadTimeout, ServerUnavailable):
        err = kind("no reply", attempts=2, bytes_sent=10, transfer_ms=3.5)
        assert isinstance(err, OffloadError)
        assert (err.attempts, err.bytes_sent, err.transfer_ms) == (2, 10, 3.5)
    rejected = OffloadRejected("wrong weights", code=grpc.StatusCode.FAILED_PRECONDITION, attempts=1)
    assert rejected.code is grpc.StatusCode.FAILED_PRECONDITION
    assert rejected.attempts == 1
    request = RequestError(grpc.StatusCode.INVALID_ARGUMENT, "bad shape")
    assert (request.code, request.message, str(request)) == (grpc.StatusCode.INVALID_ARGUMENT, "bad shape", "bad shape")


def test_errors_module_imports_only_the_standard_library() -> None:
    tree = ast.parse((PACKAGE_DIR / "errors.py").read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "typing"}
