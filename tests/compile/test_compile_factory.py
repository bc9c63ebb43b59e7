"""MODULE:FUNCTION and zoo names resolve to models the way the CLI resolves them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from edgeexit.compile.factory import build_from_factory, parse_factory_args
from edgeexit.compile.model import MultiExitModel
from edgeexit.compile.zoo import list_models
from edgeexit.errors import ModelError

FACTORY_MODULE = """
from torch import nn
from edgeexit.compile import attach_exits

CALLS = []


def build(num_classes=10, width=4):
    CALLS.append((num_classes, width))
    backbone = nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 16, num_classes)
    )
    return attach_exits(backbone, exits=[1], num_classes=num_classes, name="user_model", input_shape=(1, 1, 4, 4))


def plain():
    return nn.Linear(3, 3)


NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A factory module in the current directory, under a name no other test uses."""
    name = f"user_factory_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(FACTORY_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the factory puts the cwd on sys.path: undo it
    yield name
    sys.modules.pop(name, None)


def test_builtin_name() -> None:
    assert "digits_cnn" in list_models()
    model = build_from_factory("digits_cnn", {"num_classes": 4})
    assert isinstance(model, MultiExitModel)
    assert model.name == "digits_cnn"
    assert model.num_classes == 4


def test_unknown_builtin_lists_the_zoo() -> None:
    with pytest.raises(ModelError, match=r"neither MODULE:FUNCTION nor a built-in model.*digits_cnn"):
        build_from_factory("no_such_model")


def test_module_function_from_the_current_directory(user_module: str) -> None:
    model = build_from_factory(f"{user_module}:build", parse_factory_args(["num_classes=3", "width=2"]))
    assert isinstance(model, MultiExitModel)
    assert model.name == "user_model"
    assert model.num_classes == 3
    assert sys.modules[user_module].CALLS == [(3, 2)]
    with torch.no_grad():
        logits = model.eval()(torch.randn(2, 1, 4, 4))
    assert [tuple(z.shape) for z in logits] == [(2, 3), (2, 3)]


def test_zoo_by_module_path() -> None:
    model = build_from_factory("edgeexit.compile.zoo:digits_cnn")
    assert model.name == "digits_cnn"


def test_module_that_cannot_be_imported(user_module: str) -> None:
    with pytest.raises(ModelError, match=r"cannot import module 'no_such_module_xyz'.*expected an importable module"):
        build_from_factory("no_such_module_xyz:build")


@pytest.mark.parametrize("attr", ["missing", "NOT_CALLABLE"])
def test_missing_or_non_callable_attribute(user_module: str, attr: str) -> None:
    with pytest.raises(ModelError, match=f"module '{user_module}' has no callable '{attr}'"):
        build_from_factory(f"{user_module}:{attr}")


def test_factory_returning_something_else(user_module: str) -> None:
    with pytest.raises(ModelError, match=r"returned Linear; expected a MultiExitModel.*attach_exits"):
        build_from_factory(f"{user_module}:plain")


def test_factory_rejecting_arguments(user_module: str) -> None:
    with pytest.raises(ModelError, match=r"rejected arguments \{'colour': 'red'\}"):
        build_from_factory(f"{user_module}:build", {"colour": "red"})
    with pytest.raises(ModelError, match="rejected arguments"):
        build_from_factory("digits_cnn", {"colour": "red"})


def test_parse_factory_args() -> None:
    parsed = parse_factory_args(["num_classes=5", "name=resnet", "sizes=[1, 2]", "scale=0.5", "flag=true", "e="])
    assert parsed == {"num_classes": 5, "name": "resnet", "sizes": [1, 2], "scale": 0.5, "flag": True, "e": ""}
    assert parse_factory_args(["expr=a=b"]) == {"expr": "a=b"}
    assert parse_factory_args([]) == {}


@pytest.mark.parametrize("item", ["novalue", "=3"])
def test_parse_factory_args_rejects_non_pairs(item: str) -> None:
    with pytest.raises(ModelError, match="is not key=value"):
        parse_factory_args([item])
