"""``edgeexit.server`` imports its optional parts on first use: the tail server's models, request
validation and v2 service import without grpc-health (``app``'s health service) and without
prometheus-client (``metrics``), and ``from edgeexit.server import TailServer`` still works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import importlib.abc, json, sys

MISSING = ("grpc_health", "prometheus_client")
attempts = []

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in MISSING:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
import grpc  # its own optional probe for grpc_health is not edgeexit's doing
attempts.clear()

import edgeexit.server, edgeexit.server.models, edgeexit.server.validation, edgeexit.server.service
from edgeexit.server import ModelSet, RequestError, load_models
lazy = sorted(m for m in sys.modules if m.split(".")[0] in MISSING) + attempts
try:
    from edgeexit.server import TailServer  # app: the health service needs grpc_health
except ImportError as err:
    app_error = err.name
print(json.dumps({"lazy": lazy, "app_error": app_error}))
"""


def test_the_server_package_imports_its_optional_parts_lazily() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"lazy": [], "app_error": "grpc_health"}


def test_unknown_names_are_attribute_errors() -> None:
    import edgeexit.server

    assert "TailServer" in dir(edgeexit.server)
    with pytest.raises(AttributeError, match="NoSuchThing"):
        edgeexit.server.NoSuchThing  # noqa: B018
