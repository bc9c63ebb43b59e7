"""Commands that read a package (verify, inspect) or pack it into one tar: they run on a device (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgeexit.console import console

if TYPE_CHECKING:
    from edgeexit.signing import TrustedKeys

PackageArg = Annotated[
    Path, typer.Argument(help="Package directory written by `edgeexit export`, or a tar of one (`edgeexit pack`).")
]


TrustedKeyOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--trusted-key",
        help="A PEM Ed25519 public key (`edgeexit keygen`) whose signature this package must carry; repeat for "
        "several (keys rotate). Given any, an unsigned package or one signed by another key is refused first.",
    ),
]


def register(app: typer.Typer) -> None:
    app.command()(verify)
    app.command()(inspect)
    app.command()(pack)
    app.command()(keygen)
    app.command()(sign)


def keygen(
    out: Annotated[Path, typer.Option(help="Private key file to write (PEM, mode 0600); the public key: OUT.pub.")],
) -> None:
    """Make an Ed25519 key pair for signing packages (`edgeexit sign`); devices trust the .pub file."""
    from edgeexit.signing import generate_keypair

    public = out.with_name(out.name + ".pub")
    found = generate_keypair(out, public)
    console.print(f"wrote {out} (private: keep it on the build machine) and {public} (key id {found})")


def sign(
    package: Annotated[Path, typer.Argument(help="Package directory to sign (after its last calibration).")],
    key: Annotated[Path, typer.Option(help="PEM Ed25519 private key (`edgeexit keygen`).")],
) -> None:
    """Sign a package's manifest, which hashes every file: writes manifest.sig beside it.

    Readers given trusted keys (`verify --trusted-key`, `Engine(..., trusted_keys=...)`) refuse an
    unsigned package, one signed by another key, and one whose manifest changed after signing.
    Calibrating rewrites the manifest: sign again after."""
    from edgeexit.package import open_package, require_directory
    from edgeexit.signing import sign_package

    require_directory(package, "sign it")
    open_package(package)  # sign only what verifies: every file against its hash
    found = sign_package(package, key)
    console.print(f"signed {package} with key {found}: {package / 'manifest.sig'}")


def pack(
    package: Annotated[Path, typer.Argument(help="Package directory written by `edgeexit export`.")],
    out: Annotated[Path, typer.Argument(help="The tar to write (replaced atomically if it exists).")],
    name: Annotated[
        str | None,
        typer.Option(help="The tar's top-level directory (default: the package directory's name)."),
    ] = None,
) -> None:
    """Pack a package into one reproducible, uncompressed tar for copying to a device or server.

    Every file is checked against the manifest's sha256 first (a corrupt package is refused and
    no tar is written). The tar holds one directory (tar -xf gives the package back) with
    manifest.json and exactly the files it lists, sorted, with fixed times, owners and modes: the
    same package packs to the same bytes. verify, inspect, run, serve and the device daemon take
    the tar as they take the directory.
    """
    from rich.markup import escape

    from edgeexit.archive import pack as pack_package

    packed = pack_package(package, out, root_name=name)
    console.print(f"[green]packed[/] {escape(str(package))} -> {escape(str(packed.path))}", highlight=False)
    console.print(
        f"  {packed.files} files under {escape(packed.root_name)}/, {packed.size} bytes "
        f"({packed.size / 1e6:.1f} MB)\n"
        f"  sha256      {packed.sha256}\n"
        f"  package_id  {packed.package_id} ({escape(packed.model_name)})",
        highlight=False,
    )
    if packed.skipped:
        shown = ", ".join(packed.skipped[:5]) + (" ..." if len(packed.skipped) > 5 else "")
        console.print(
            f"  left out {len(packed.skipped)} file(s) the manifest does not list: {escape(shown)}", highlight=False
        )


def verify(package: PackageArg, trusted_key: TrustedKeyOpt = None) -> None:
    """Re-check a package: schema, version, file hashes, graph signatures and parity.

    Parity: the chained segments (and the monolithic graph) run on the stored reference input
    must reproduce the PyTorch outputs recorded at export. Each tail must load, match its
    config.pbtxt and reproduce PyTorch's logits for the encoded reference boundary tensor.
    A tflite variant must reproduce them too (when ai-edge-litert is installed); an int8 variant
    must run, and its agreement with fp32 is reported.
    """
    from rich.markup import escape

    from edgeexit.cli.render import parity_table
    from edgeexit.errors import PackageError
    from edgeexit.runtime.verify import verify_package
    from edgeexit.signing import TrustedKeys

    trusted = TrustedKeys.load(trusted_key) if trusted_key else None
    from edgeexit.generation.package import is_decoder_package

    if is_decoder_package(package):
        _verify_decoder(package, trusted)
        return
    report = verify_package(package, trusted_keys=trusted)
    if trusted is not None:
        console.print(f"signature: the manifest is signed by a trusted key ({', '.join(sorted(trusted.keys))})")
    console.print(parity_table(f"verify {package}: {report.files_checked} file hashes ok", report.checks))
    if report.tails_checked:
        console.print(
            f"{report.tails_checked} tail(s): config.pbtxt matches the manifest and the graph's inputs/outputs"
        )
    for note in report.notes:
        console.print(escape(note), highlight=False)
    if not report.ok:
        failed = [f"{c.graph} {c.output} ({c.max_abs_diff:.3g})" for c in report.checks if not c.ok]
        reference = report.package.manifest.reference
        raise PackageError(
            f"{package}: outputs differ from the stored reference beyond atol={reference.atol:g}, "  # type: ignore[union-attr]
            f"rtol={reference.rtol:g} (a variant: the tolerances its export used): {', '.join(failed)}"  # type: ignore[union-attr]
        )
    console.print(f"[green]ok[/]: {package} (package_id {report.package.manifest.package_id})")


def _verify_decoder(package: Path, trusted: TrustedKeys | None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgeexit.generation.verify import require_ok, verify_decoder_package

    report = verify_decoder_package(package, trusted_keys=trusted)
    if trusted is not None:
        console.print("signature: the manifest is signed by a trusted key")
    table = Table(title=f"verify {package}: {report.files_checked} file hashes ok; greedy text against the export's")
    for column in ("row", "prompt", "tokens agreeing", "must be identical", "ok"):
        table.add_column(column)
    for check in report.checks:
        table.add_row(check.row, escape(check.prompt[:40]), f"{check.agreeing} of {check.expected}",
                      "yes" if check.required else "no", "ok" if check.ok else "[red]DIFFERS[/]")  # fmt: skip
    console.print(table)
    for note in report.notes:
        console.print(escape(note), highlight=False)
    require_ok(report, package)
    console.print(f"[green]ok[/]: {package} (decoder package)")


def inspect(package: PackageArg) -> None:
    """Print a package's segments, exits, FLOPs, hidden-tensor bytes, thresholds and offload tails."""
    from edgeexit.cli.render import calibration_method, segments_table, tails_table
    from edgeexit.package import open_package

    manifest = open_package(package).manifest
    console.print(segments_table(manifest))
    spec = manifest.input
    console.print(
        f"input {spec.name} {list(spec.shape)} {spec.dtype} {spec.layout}; {len(manifest.labels)} labels: "
        f"{', '.join(manifest.labels[:10])}{' ...' if len(manifest.labels) > 10 else ''}"
    )
    if manifest.monolithic:
        console.print(f"monolithic graph: {manifest.monolithic}")
    if manifest.tails:
        console.print(tails_table(manifest))
    else:
        console.print("no tails: export with --codecs to offload")
    if manifest.calibration:
        c = manifest.calibration
        console.print(
            f"calibrated ({calibration_method(c)}): accuracy {c.accuracy:.4f} (final exit {c.final_accuracy:.4f})",
            highlight=False,
        )
    else:
        console.print("not calibrated: thresholds are export defaults")
