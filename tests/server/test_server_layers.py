"""``edgeexit.server`` imports its optional parts on first use: the tail server's models, request
validation and v2 service import without grpc-health (``app``'s health service) and without
prometheus-client (``metrics``), and ``from edgeexit.server import TailServer`` still works."""

from __future__ import annotations

import pytest

MISSING = ("grpc_health", "prometheus_client")
SCRIPT = r"""
import edgeexit.server, edgeexit.server.models, edgeexit.server.validation, edgeexit.server.service
from edgeexit.server import ModelSet, RequestError, load_models
lazy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED) + attempts
try:
    from edgeexit.server import TailServer  # app: the health service needs grpc_health
except ImportError as err:
    app_error = err.name
print(json.dumps({"lazy": lazy, "app_error": app_error}))
"""


def test_the_server_package_imports_its_optional_parts_lazily(python_without) -> None:
    assert python_without(SCRIPT, MISSING) == {"lazy": [], "app_error": "grpc_health"}


def test_unknown_names_are_attribute_errors() -> None:
    import edgeexit.server

    assert "TailServer" in dir(edgeexit.server)
    with pytest.raises(AttributeError, match="NoSuchThing"):
        edgeexit.server.NoSuchThing  # noqa: B018
