"""Measure what each extra costs on disk: a fresh venv per extra, installed with the pins.

    python tools/install_size.py [--extras device export] [--keep DIR]

Prints the size of each venv's site-packages and its largest packages, and whether torch or onnx
landed in it (they must not, for [device]). Needs the package registry (pip), not the network.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def measure(extra: str, workdir: Path) -> dict[str, object]:
    venv = workdir / f"venv-{extra}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt")]
    started = time.perf_counter()
    subprocess.run([*pip, f"{ROOT}[{extra}]"], check=True)
    seconds = time.perf_counter() - started
    site = next((venv / "lib").glob("python*/site-packages"))
    baseline = {"pip", "setuptools", "_distutils_hack"}
    sizes = {
        p.name: du(p) if p.is_dir() else p.stat().st_size
        for p in site.iterdir()
        if not p.name.endswith((".dist-info", ".pth")) and p.name.split(".")[0] not in baseline
    }
    return {
        "extra": extra,
        "install_seconds": round(seconds, 1),
        "site_packages_mb": round(sum(sizes.values()) / 1e6, 1),
        "has_torch": (site / "torch").exists(),
        "has_onnx": (site / "onnx").exists(),
        "largest": sorted(sizes.items(), key=lambda kv: -kv[1])[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", nargs="+", default=["device", "export"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for extra in args.extras:
            row = measure(extra, Path(tmp))
            largest = ", ".join(f"{name} {size / 1e6:.0f} MB" for name, size in row["largest"])  # type: ignore[union-attr]
            print(
                f"[{row['extra']}] site-packages {row['site_packages_mb']} MB, install {row['install_seconds']} s, "
                f"torch={'yes' if row['has_torch'] else 'no'} onnx={'yes' if row['has_onnx'] else 'no'}; "
                f"largest: {largest}"
            )


if __name__ == "__main__":
    main()
