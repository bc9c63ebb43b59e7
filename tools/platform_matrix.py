"""Resolve the device-side extras for every board's platform and Python, without a board.

    python tools/platform_matrix.py [--extras device server tflite] [--pythons 3.10 3.11 3.12]
                                    [--machines aarch64 x86_64] [--json out.json]

For each extra x machine x Python it asks pip what `pip install -c constraints.txt 'edgeexit[extra]'`
would install there (`pip install --dry-run --report`, binary wheels only: a board has no compilers
for grpcio or onnxruntime), prints one table row per cell with the resolved versions of the key
packages, and checks that every resolved package is pinned by the constraints file for that target,
so installs stay reproducible. Exit status: 0 every cell resolves, pinned; 1 some cell does not;
3 the package registry is unreachable (nothing was resolved, so nothing was proven either way).

Why it does more than `pip download --platform`:

- pip evaluates environment markers (``; python_version < "3.11"`` in constraints.txt or in a
  dependency's metadata) against the interpreter running pip, whatever ``--platform`` and
  ``--python-version`` say (pypa/pip#11664). A Python 3.11 x86-64 host would silently apply its own
  pins to a Python 3.10 aarch64 cell. So pip runs here with its marker environment replaced by the
  target's (python_version, platform_machine, sys_platform, ...; the way pex resolves for foreign
  platforms). platform_release/platform_version stay the host's: nothing here uses them.
- pip does not widen ``--platform manylinux_2_28_aarch64`` to the older manylinux_2_x tags a glibc
  2.28+ system also runs (pip 23.2 takes the tag literally), which made ai-edge-litert's
  manylinux_2_27_aarch64 wheels look absent. Every tag a glibc 2.35 system accepts is passed
  instead: JetPack 6 (Ubuntu 22.04) has glibc 2.35, Raspberry Pi OS bookworm 2.36.
- The machine's pip configuration is left out (PIP_CONFIG_FILE=/dev/null, and PIP_* variables
  other than the index, certificate and timeout ones): a global constraint file or local wheel
  directories would change what resolves, and a board sees only the index. The project's
  constraints file is the only one used.
- pip itself is pinned (PIP_VERSION, hash-checked, downloaded once into the user's cache): the
  marker override depends on pip's internals, and pip 26 resolves a cell about 2-3x faster than
  pip 23.2 when the index serves no PEP 658 metadata (every resolution then downloads the wheels it
  considers; pip's HTTP cache does not help when the index sends no cache headers).
- Index files pip could never pick (other versions of a pinned package, sdists) are dropped before
  pip parses the pages (see _SHIM): the same outcome, in ~5 s a cell instead of ~7-25 s.

The project is not built: the extra's requirements are read from pyproject.toml (self-references such
as ``edgeexit[export]`` expanded), with ``requires-python`` checked against each target, and given
to pip as requirements, so only registry packages are resolved, each as a binary wheel.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import itertools
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ModuleNotFoundError:  # a bare interpreter: pip always carries packaging
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.specifiers import SpecifierSet  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("device", "server", "tflite")
MACHINES = ("aarch64", "x86_64")
PYTHONS = ("3.10", "3.11", "3.12")
#: The boards' own patch releases (JetPack 6 / Ubuntu 22.04, Raspberry Pi OS bookworm, Ubuntu 24.04),
#: for markers on python_full_version.
FULL_VERSIONS = {"3.10": "3.10.12", "3.11": "3.11.2", "3.12": "3.12.3"}
KEY_PACKAGES = ("onnxruntime", "numpy", "grpcio", "protobuf", "ai-edge-litert")
#: The oldest glibc among the boards: JetPack 6 is Ubuntu 22.04 (2.35); Raspberry Pi OS bookworm has 2.36.
GLIBC_MINOR = 35
PIP_VERSION = "26.3"
PIP_SHA256 = "f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13"
DEFAULT_INDEX = "https://pypi.org/simple"
#: Exit status when the registry cannot be reached: a skip, not a failure, for the CI test.
UNREACHABLE = 3
#: PIP_* variables that say how to reach the index, not what to resolve: kept.
PIP_KEEP = frozenset(
    {
        "PIP_INDEX_URL",
        "PIP_CERT",
        "PIP_CLIENT_CERT",
        "PIP_TRUSTED_HOST",
        "PIP_DEFAULT_TIMEOUT",
        "PIP_RETRIES",
        "PIP_PROXY",
    }
)
#: pip's words for a registry it could not reach (it logs them and then reports "no matching
#: distribution", which must not read as a resolution failure).
NETWORK_ERRORS = re.compile(
    r"Could not fetch URL|NewConnectionError|ConnectTimeout|ReadTimeout|Max retries exceeded|"
    r"Temporary failure in name resolution|Name or service not known|Network is unreachable|"
    r"Connection refused|connection broken|SSLError"
)

# pip with the target's marker environment. argv: pip's directory, the target's marker environment and
# its pins (JSON), pip's arguments. Before pip parses an index page, the files it could never pick are
# dropped: other versions of a pinned package (the constraints refuse them) and non-wheels
# (--only-binary=:all: refuses them). grpcio's page alone lists thousands of files; parsing them all
# was most of a cell's time, and the outcome is the same.
_SHIM = """
import functools, json, re, sys
sys.path.insert(0, sys.argv[1])
from pip._vendor.packaging import markers
from pip._vendor.packaging.version import InvalidVersion, Version
from pip._internal.models.link import Link
_target, _pins = json.loads(sys.argv[2]), json.loads(sys.argv[3])
_host = markers.default_environment
def _environment():
    env = _host()
    env.update(_target)
    return env
markers.default_environment = _environment
@functools.lru_cache(maxsize=None)
def _version(text):
    try:
        return str(Version(text))
    except InvalidVersion:
        return None
_from_json = Link.from_json.__func__
def _candidate(cls, file_data, page_url):
    filename = file_data.get("filename") or ""
    if not filename.endswith(".whl"):
        return None
    parts = filename.split("-")
    pin = _pins.get(re.sub(r"[-_.]+", "-", parts[0]).lower()) if len(parts) >= 5 else None
    if pin is not None and parts[1] != pin and _version(parts[1]) != pin:
        return None
    return _from_json(cls, file_data, page_url)
Link.from_json = classmethod(_candidate)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[4:]))
"""


class Unreachable(Exception):
    """The package registry did not answer: nothing can be resolved."""


@dataclass
class Cell:
    """One extra on one machine and Python, and what pip made of it."""

    extra: str
    machine: str
    python: str
    ok: bool = False
    status: str = "not run"
    packages: dict[str, str] = field(default_factory=dict)
    unpinned: list[str] = field(default_factory=list)
    seconds: float = 0.0
    detail: str = ""


def marker_environment(machine: str, python: str) -> dict[str, str]:
    """The PEP 508 marker values of CPython ``python`` on Linux ``machine``."""
    full = FULL_VERSIONS.get(python, f"{python}.0")
    return {
        "python_version": python,
        "python_full_version": full,
        "implementation_version": full,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_machine": machine,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
    }


def platform_tags(machine: str, glibc_minor: int = GLIBC_MINOR) -> list[str]:
    """Every manylinux tag a glibc 2.``glibc_minor`` system on ``machine`` installs, newest first
    (what packaging.tags computes on the board itself; pip's --platform takes tags literally)."""
    oldest = 5 if machine in ("x86_64", "i686") else 17  # manylinux1 is glibc 2.5; aarch64 starts at 2014
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(glibc_minor, oldest - 1, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{machine}" for minor, name in legacy.items() if minor >= oldest]


def extra_requirements(pyproject: Path, extra: str) -> tuple[list[str], str]:
    """The requirement strings ``pip install 'project[extra]'`` starts from, and requires-python.

    The core dependencies plus the extra's, with self-references (``edgeexit[export]``) expanded.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    name = canonicalize_name(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    found = list(project.get("dependencies", []))
    seen: set[str] = set()

    def add(wanted: str) -> None:
        if wanted in seen:
            return
        if wanted not in optional:
            raise SystemExit(f"{pyproject} has no extra [{wanted}]; it has {sorted(optional)}")
        seen.add(wanted)
        for text in optional[wanted]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) != name:
                found.append(text)
            elif requirement.marker is not None:
                raise SystemExit(
                    f"{pyproject}: [{wanted}] includes {text!r}; a marker on a self-reference is not handled"
                )
            else:
                for sub in sorted(requirement.extras):
                    add(sub)

    add(extra)
    return found, project.get("requires-python", "")


def pins(constraints: Path, environment: dict[str, str]) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line whose marker holds in ``environment``."""
    found: dict[str, str] = {}
    for number, raw in enumerate(constraints.read_text().splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise SystemExit(f"{constraints}:{number}: options ({line!r}) are not followed; list pins only")
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        specifiers = list(requirement.specifier)
        if len(specifiers) == 1 and specifiers[0].operator == "==":
            found[canonicalize_name(requirement.name)] = str(Version(specifiers[0].version))
    return found


def pip_environment(index_url: str | None) -> dict[str, str]:
    """This process's environment without the machine's pip configuration (see the module doc)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in PIP_KEEP}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    if index_url:
        env["PIP_INDEX_URL"] = index_url
    return env


def check_registry(index_url: str, env: dict[str, str]) -> None:
    """Raise Unreachable unless the index answers for pip's own project page."""
    context = ssl.create_default_context(cafile=env.get("PIP_CERT"))
    url = index_url.rstrip("/") + "/pip/"
    try:
        with urllib.request.urlopen(url, timeout=20, context=context) as response:
            response.read(1)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise Unreachable(f"{url}: {err}") from None


def pinned_pip(cache: Path, env: dict[str, str]) -> Path:
    """pip PIP_VERSION unpacked under ``cache`` (downloaded once with the running pip, hash-checked)."""
    target = cache / f"pip-{PIP_VERSION}"
    if (target / "pip" / "__init__.py").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / f"pip-{PIP_VERSION}-py3-none-any.whl"
    if not wheel.exists() or hashlib.sha256(wheel.read_bytes()).hexdigest() != PIP_SHA256:
        with tempfile.TemporaryDirectory() as tmp:
            requirements = Path(tmp) / "pip.txt"
            requirements.write_text(f"pip=={PIP_VERSION} --hash=sha256:{PIP_SHA256}\n")
            download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
            fetched = subprocess.run(
                [*download, "--require-hashes", "-r", str(requirements), "-d", tmp],
                capture_output=True,
                text=True,
                env=env,
                timeout=600,
            )
            output = fetched.stdout + fetched.stderr
            if fetched.returncode != 0:
                if NETWORK_ERRORS.search(output):
                    raise Unreachable(f"downloading pip {PIP_VERSION}: {output.strip().splitlines()[-1]}")
                raise SystemExit(f"could not download pip {PIP_VERSION}:\n{output}")
            os.replace(Path(tmp) / wheel.name, wheel)
    unpacking = cache / f".pip-{PIP_VERSION}.{os.getpid()}"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacking)
    # Byte-compile once: with PYTHONDONTWRITEBYTECODE set, every cell would compile pip again (~1 s).
    compileall.compile_dir(unpacking, quiet=1)
    try:
        os.replace(unpacking, target)
    except OSError:  # another run unpacked it first
        shutil.rmtree(unpacking, ignore_errors=True)
    return target


def resolve(
    cell: Cell,
    requirements: Sequence[str],
    constraints: Path,
    pip_dir: Path,
    env: dict[str, str],
    workdir: Path,
) -> Cell:
    """Fill ``cell`` with what pip would install for it (a dry run: nothing is installed)."""
    target = marker_environment(cell.machine, cell.python)
    pinned = pins(constraints, target)
    report = workdir / f"{cell.extra}-{cell.machine}-{cell.python}.json"
    command = [
        sys.executable,
        "-c",
        _SHIM,
        str(pip_dir),
        json.dumps(target),
        json.dumps(pinned),
        "install",
        "--dry-run",
    ]
    command += ["--ignore-installed", "--report", str(report), "--target", str(workdir / "target")]
    command += ["--only-binary=:all:", "--implementation", "cp", "--python-version", cell.python]
    command += [arg for tag in platform_tags(cell.machine) for arg in ("--platform", tag)]
    command += ["--progress-bar", "off", "-c", str(constraints), *requirements]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    cell.seconds = round(time.perf_counter() - started, 1)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        cell.status = "NET" if NETWORK_ERRORS.search(output) else "FAIL"
        noise = ("Collecting", "  Downloading", "  Using cached", "  Obtaining", "Downloading")
        errors = [line for line in output.splitlines() if line.strip() and not line.lstrip().startswith(noise)]
        cell.detail = "\n".join(errors[-15:])
        return cell
    data = json.loads(report.read_text())
    if data.get("pip_version") != PIP_VERSION:
        raise SystemExit(f"the resolution ran pip {data.get('pip_version')}, not the pinned {PIP_VERSION}")
    cell.packages = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in data["install"]
    }
    cell.unpinned = sorted(
        f"{name}=={version}" for name, version in cell.packages.items() if pinned.get(name) != str(Version(version))
    )
    cell.ok = not cell.unpinned
    cell.status = "OK" if cell.ok else "UNPINNED"
    if cell.unpinned:
        cell.detail = f"not pinned by {constraints.name} for this target: {', '.join(cell.unpinned)}"
    return cell


def python_allowed(requires_python: str, python: str) -> bool:
    """Whether ``requires-python`` admits the target Python."""
    if not requires_python:
        return True
    return SpecifierSet(requires_python).contains(FULL_VERSIONS.get(python, f"{python}.0"))


def table(cells: Iterable[Cell]) -> str:
    """The matrix as a Markdown table (it reads as plain text too)."""
    header = ["extra", "platform", "python", "result", *KEY_PACKAGES, "s"]
    rows = [header, ["---"] * len(header)]
    for c in cells:
        versions = [c.packages.get(name, "-") for name in KEY_PACKAGES]
        rows.append([f"[{c.extra}]", f"linux/{c.machine}", c.python, c.status, *versions, f"{c.seconds:.1f}"])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", nargs="+", default=list(EXTRAS))
    parser.add_argument("--machines", nargs="+", default=list(MACHINES), choices=["aarch64", "x86_64"])
    parser.add_argument("--pythons", nargs="+", default=list(PYTHONS))
    parser.add_argument("--constraints", type=Path, default=ROOT / "constraints.txt")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument(
        "--index-url", help=f"the index to resolve against (default: PIP_INDEX_URL, else {DEFAULT_INDEX})"
    )
    parser.add_argument("--jobs", type=int, default=max(2, min(6, (os.cpu_count() or 1) + 1)), help="cells at a time")
    parser.add_argument("--json", type=Path, help="also write every cell (all resolved versions) here")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeexit" / "tools",
        help="where the pinned pip is kept",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    env = pip_environment(args.index_url)
    index_url = env.get("PIP_INDEX_URL", DEFAULT_INDEX)
    constraints = args.constraints.resolve()
    try:
        check_registry(index_url, env)
        pip_dir = pinned_pip(args.cache, env)
    except Unreachable as err:
        print(f"package registry unreachable, nothing resolved: {err}", file=sys.stderr)
        return UNREACHABLE
    requirements = {extra: extra_requirements(args.pyproject, extra) for extra in args.extras}
    cells = [Cell(e, m, p) for e, m, p in itertools.product(args.extras, args.machines, args.pythons)]
    print(
        f"pip {PIP_VERSION} (target marker environment), --only-binary=:all:, manylinux up to glibc 2.{GLIBC_MINOR}, "
        f"-c {constraints.relative_to(ROOT) if constraints.is_relative_to(ROOT) else constraints}, index {index_url}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="platform-matrix-") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        futures = []
        for cell in cells:
            wanted, requires_python = requirements[cell.extra]
            if not python_allowed(requires_python, cell.python):
                cell.status, cell.detail = "FAIL", f"requires-python {requires_python} excludes {cell.python}"
                continue
            futures.append(pool.submit(resolve, cell, wanted, constraints, pip_dir, env, Path(tmp)))
        for future in futures:
            future.result()
    print(table(cells))
    for cell in cells:
        if not cell.ok:
            print(f"\n[{cell.extra}] linux/{cell.machine} Python {cell.python}: {cell.status}\n{cell.detail}")
    wall = time.perf_counter() - started
    print(f"\n{sum(c.ok for c in cells)}/{len(cells)} cells resolve, fully pinned; {wall:.0f} s wall")
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in cells], indent=1) + "\n")
    if all(c.ok or c.status == "NET" for c in cells) and not all(c.ok for c in cells):
        # No cell failed on its merits; the registry stopped answering: the NET cells prove nothing.
        print("the registry stopped answering during the run: the NET cells prove nothing", file=sys.stderr)
        return UNREACHABLE
    return 0 if all(c.ok for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
