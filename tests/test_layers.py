"""The layer rules of DESIGN.md as a contract the suite enforces.

- The device path (manifest, package, runtime, data, CLI) never loads torch or onnx, which a
  device does not install: a fresh interpreter imports the device modules and verifies a real
  package, then inspects ``sys.modules``; and a static pass over the source catches a top-level
  ``import torch`` in a module that the dynamic check happens not to import.
- The library never imports the CLI: no module outside ``edgeexit.cli`` imports it, not even
  inside a function (``edgeexit/__main__.py``, the CLI's launcher, excepted).
- The device-side layers (runtime, device, server, daemon, transport, ...) never import
  ``edgeexit.compile``, torch or onnx, not even lazily inside a function.

The static passes read every ``import`` in the source; only ``if TYPE_CHECKING:`` blocks (never
run) are left out.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "edgeexit"  # the source tree, as checked in
HEAVY = ("torch", "onnx", "onnxscript")  # onnxruntime is the device's runtime; "onnx" is the exporter's library

DEVICE_SCRIPT = r"""
import edgeexit, edgeexit.manifest, edgeexit.package, edgeexit.runtime, edgeexit.runtime.verify
import edgeexit.data, edgeexit.cli
import edgeexit.server, edgeexit.server.app  # the tail server: grpc, ORT, no torch
from edgeexit.runtime.verify import verify_package
from edgeexit.cli import app

report = verify_package(sys.argv[1])
assert report.ok, report.checks
for command in ("verify", "inspect"):  # the CLI commands too, in process, with their table rendering
    app([command, sys.argv[1]], standalone_mode=False)
loaded = sorted(
    m for m in sys.modules
    if m.split(".")[0] in ("torch", "onnx", "onnxscript") or m.split(".")[:2] == ["edgeexit", "compile"]
)
print(json.dumps({"loaded": loaded, "attempts": attempts}))
"""


def test_device_path_loads_no_torch_or_onnx(digits_package: Path, python_without) -> None:
    found = python_without(DEVICE_SCRIPT, (), str(digits_package))
    assert found["loaded"] == [], f"the device path loaded {found['loaded']}"


def test_device_path_works_when_torch_and_onnx_cannot_be_imported(digits_package: Path, python_without) -> None:
    found = python_without(DEVICE_SCRIPT, HEAVY, str(digits_package))  # a device without torch/onnx
    assert found == {"loaded": [], "attempts": []}


# --- static check ---------------------------------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def top_level_imports(source: str, module: str, *, lazy: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import that runs when ``module`` is imported.

    That is the module body, including ``if``/``try``/``with`` blocks and class bodies, but not
    function bodies (lazy imports; ``lazy=True`` adds them) nor ``if TYPE_CHECKING:`` blocks.
    Relative imports are resolved against ``module``; ``from a import b`` yields both ``a`` and
    ``a.b`` (b may be a submodule).
    """
    package_parts = module.split(".")[:-1]  # a module's package; for "a.b.__init__" that is a.b itself
    found: list[tuple[int, str]] = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.extend((node.lineno, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package_parts[: len(package_parts) - (node.level - 1)]
                    base = ".".join([*base_parts, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                found.append((node.lineno, base))
                found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if lazy:
                    visit(node.body)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try) or (sys.version_info >= (3, 11) and isinstance(node, ast.TryStar)):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, (ast.With, ast.AsyncWith, ast.For, ast.AsyncFor, ast.While)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
            elif isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(ast.parse(source).body)
    return found


def is_forbidden(name: str) -> bool:
    root = name.split(".")[0]
    return root in HEAVY or name == "edgeexit.compile" or name.startswith("edgeexit.compile.")


def module_name(file: Path) -> str:
    relative = file.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts)


def non_compile_modules() -> list[Path]:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    return [f for f in files if "compile" not in f.relative_to(PACKAGE_DIR).parts[:1]]


def test_the_static_check_sees_what_runs_at_import() -> None:
    source = """
import os
import torch.nn as nn
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import onnx
try:
    from onnx import helper
except ImportError:
    pass
from edgeexit import compile
from .compile import zoo
from ..compile.export import export
class Thing:
    import onnxscript
def lazy():
    import torch
    from edgeexit.compile import export
"""
    found = [name for _, name in top_level_imports(source, "edgeexit.cli.commands") if is_forbidden(name)]
    assert found == [
        "torch.nn",
        "onnx",  # from onnx import helper: the module ...
        "onnx.helper",  # ... and what may be a submodule
        "edgeexit.compile",  # from edgeexit import compile
        "edgeexit.compile.export",  # a relative import, resolved against the package
        "edgeexit.compile.export.export",
        "onnxscript",  # class bodies run at import
    ]  # not: onnx under TYPE_CHECKING, torch and edgeexit.compile inside a function, edgeexit.cli.compile


def test_no_module_outside_compile_imports_torch_onnx_or_compile_at_top_level() -> None:
    modules = non_compile_modules()
    assert PACKAGE_DIR / "cli" / "workstation_commands.py" in modules
    assert PACKAGE_DIR / "runtime" / "verify.py" in modules
    offences = []
    for file in modules:
        name = module_name(file)
        for line, imported in top_level_imports(file.read_text(encoding="utf-8"), name):
            if is_forbidden(imported):
                offences.append(f"{file.relative_to(PACKAGE_DIR.parent)}:{line} imports {imported}")
    assert offences == [], "top-level imports that break the device layer:\n" + "\n".join(offences)


@pytest.mark.parametrize("module", ["manifest.py", "package.py", "fileio.py", "errors.py", "parity.py"])
def test_manifest_layer_does_not_import_a_runtime(module: str) -> None:
    """The manifest layer is read before anything is loaded (DESIGN: numpy only)."""
    file = PACKAGE_DIR / module
    imported = [name for _, name in top_level_imports(file.read_text(encoding="utf-8"), f"edgeexit.{file.stem}")]
    assert not [n for n in imported if n.split(".")[0] in ("onnxruntime", "grpc", *HEAVY)], imported


# --- the library never imports the CLI; the device side never imports compile, torch or onnx ---------------------

#: The packages and top-level modules a device installs and runs: none may reach for the exporter.
#: (``int8_schemes`` is a workstation module at the top level: quantize and tools use it, onnx lazily.)
DEVICE_SIDE_PACKAGES = (
    "runtime", "generation", "device", "server", "daemon", "transport", "policy", "profile", "data", "calibration",
    "criteria", "codecs", "kserve",
)  # fmt: skip
DEVICE_SIDE_MODULES = (
    "__init__.py", "archive.py", "console.py", "errors.py", "fileio.py", "manifest.py", "package.py",
    "parity.py", "procs.py", "registry.py", "reports.py", "repository.py",
)  # fmt: skip


def is_cli(name: str) -> bool:
    return name == "edgeexit.cli" or name.startswith("edgeexit.cli.")


def every_import(file: Path) -> list[tuple[int, str]]:
    """Every import in ``file``, inside functions too (TYPE_CHECKING blocks excepted)."""
    return top_level_imports(file.read_text(encoding="utf-8"), module_name(file), lazy=True)


def offences(files: list[Path], forbidden) -> list[str]:
    return [
        f"{file.relative_to(PACKAGE_DIR.parent)}:{line} imports {imported}"
        for file in files
        for line, imported in every_import(file)
        if forbidden(imported)
    ]


def device_side_files() -> list[Path]:
    files = [f for package in DEVICE_SIDE_PACKAGES for f in sorted((PACKAGE_DIR / package).rglob("*.py"))]
    return files + [PACKAGE_DIR / name for name in DEVICE_SIDE_MODULES if (PACKAGE_DIR / name).exists()]


def test_the_lazy_pass_also_sees_imports_inside_functions() -> None:
    source = """
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from edgeexit.cli.render import segments_table
def lazy():
    from edgeexit.cli import render
    import torch
class Thing:
    def method(self):
        from ..compile import zoo
"""
    module = "edgeexit.device.comparison"
    assert [name for _, name in top_level_imports(source, module, lazy=True)] == [
        "typing",
        "typing.TYPE_CHECKING",  # not: the CLI under TYPE_CHECKING, which never runs
        "edgeexit.cli",
        "edgeexit.cli.render",
        "torch",
        "edgeexit.compile",  # a method's relative import, resolved against the package
        "edgeexit.compile.zoo",
    ]
    assert [name for _, name in top_level_imports(source, module)] == ["typing", "typing.TYPE_CHECKING"]


def test_the_library_never_imports_the_cli() -> None:
    library = [
        f
        for f in sorted(PACKAGE_DIR.rglob("*.py"))
        if f.relative_to(PACKAGE_DIR).parts[0] != "cli" and f != PACKAGE_DIR / "__main__.py"
    ]
    assert PACKAGE_DIR / "compile" / "demo.py" in library
    found = offences(library, is_cli)
    assert found == [], "library modules that import the CLI (move what they need out of edgeexit.cli):\n" + "\n".join(
        found
    )


def test_the_device_side_never_imports_compile_torch_or_onnx() -> None:
    files = device_side_files()
    for package in DEVICE_SIDE_PACKAGES:  # a package renamed or removed must update the list above
        assert (PACKAGE_DIR / package / "__init__.py") in files, package
    found = offences(files, is_forbidden)
    assert found == [], "device-side modules that reach for the exporter, even lazily:\n" + "\n".join(found)


#: What edgeexit.kserve may import (besides the standard library): the daemon runs it under the
#: ``[device]`` extra, which has grpc and protobuf but no grpc-health.
KSERVE_ALLOWED = (
    "grpc",
    "google.protobuf",
    "numpy",
    "edgeexit.__version__",
    "edgeexit.errors",
    "edgeexit.kserve",
    "edgeexit.transport.generated",
)


def test_kserve_imports_only_grpc_protobuf_numpy_and_edgeexit_errors() -> None:
    files = sorted((PACKAGE_DIR / "kserve").glob("*.py"))
    assert files

    def forbidden(name: str) -> bool:
        root = name.split(".")[0]
        if root in sys.stdlib_module_names or root == "__future__" or name == "edgeexit":  # edgeexit: its __version__
            return False
        return not any(name == allowed or name.startswith(f"{allowed}.") for allowed in KSERVE_ALLOWED)

    assert offences(files, forbidden) == []
