"""The Pareto plot is a real PNG, written atomically, headless."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeexit.calibration import Outcome, plot_pareto

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png_that_pillow_opens(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    curve = [(1.0, 0.80), (1.5, 0.90), (2.2, 0.95), (3.0, 0.96)]
    chosen = Outcome(
        accuracy=0.95, expected_ms=2.2, exit_rate=(0.5, 0.3, 0.2), exit_accuracy=(1.0, 0.9, 0.8), samples=10
    )
    target = tmp_path / "plots" / "pareto.png"
    plot_pareto(curve, chosen, (3.0, 0.96), target, criterion="max_prob", max_drop=0.01, target_accuracy=0.95)
    data = target.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    with image_module.open(target) as image:
        image.verify()
    with image_module.open(target) as image:
        assert image.format == "PNG"
        assert image.size[0] > 300
        assert image.size[1] > 200
        assert np.asarray(image.convert("L")).std() > 0  # something was drawn
    assert [p.name for p in target.parent.iterdir()] == ["pareto.png"]  # no temporary file left behind


def test_plot_replaces_an_existing_file_and_handles_an_empty_curve(tmp_path: Path) -> None:
    target = tmp_path / "pareto.png"
    target.write_bytes(b"old")
    chosen = Outcome(accuracy=0.9, expected_ms=3.0, exit_rate=(0.0, 1.0), exit_accuracy=(None, 0.9), samples=5)
    plot_pareto([], chosen, (3.0, 0.9), target, criterion="patience", max_drop=0.0)
    assert target.read_bytes().startswith(PNG_SIGNATURE)
