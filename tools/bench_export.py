"""Export time and ONNX Runtime vs PyTorch parity for the built-in models, side by side.

    python tools/bench_export.py [--models demo_cnn tiny_resnet tiny_vit]

Untrained weights (export cost and parity do not depend on training); parity uses seeded random
inputs, per segment and chained end to end, plus the monolithic graph.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from edgeexit.compile.export import export, parity_rows
from edgeexit.compile.zoo import create_model

SHAPES = {
    "demo_cnn": (1, 1, 28, 28),
    "digits_cnn": (1, 1, 8, 8),
    "tiny_resnet": (1, 3, 32, 32),
    "tiny_vit": (1, 1, 28, 28),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["demo_cnn", "tiny_resnet", "tiny_vit"])
    args = parser.parse_args()
    columns = ("segments", "export s", "s/graph", "max |diff| seg", "max |diff| chain", "max |diff| mono")
    widths = (8, 9, 8, 15, 17, 16)
    print(f"{'model':<12} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = create_model(name)
            started = time.perf_counter()
            package = export(model, SHAPES[name], Path(tmp) / name, monolithic=True)
            seconds = time.perf_counter() - started
            rows = parity_rows(package)
            worst = {
                kind: max((r.max_abs_diff for r in rows if r.graph.startswith(kind)), default=0.0)
                for kind in ("segment", "chain", "monolithic")
            }
            graphs = len(package.manifest.segments) + 1
            print(
                f"{name:<12} {len(package.manifest.segments):>8} {seconds:>9.2f} {seconds / graphs:>8.2f} "
                f"{worst['segment']:>15.2e} {worst['chain']:>17.2e} {worst['monolithic']:>16.2e}"
            )


if __name__ == "__main__":
    main()
