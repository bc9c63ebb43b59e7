"""The generic adapter's models: what cutting a traced graph costs at run time.

    python tools/bench_graphs.py [--samples 300] [--rounds 5] [--threads 1]

For each zoo model the generic adapter cuts (MobileNetV2, a U-Net whose skips cross the cuts,
ConvNeXt, an image + side-vector model), exported here with its monolithic graph, measured side
by side in one run with the same thread count, rounds alternating: batch-1 full-depth latency of
the segmented package through the engine (its bound chain where the package allows one) against
the monolithic graph in one ONNX Runtime session. Also printed: the tensors and bytes per sample
crossing each boundary. Weights are untrained: this is about time, not accuracy. Workstation tool
(uses torch to build and export the models).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = ("graph_mobilenet_v2", "graph_unet", "graph_convnext", "graph_two_inputs")


def _feeds(model, n: int) -> list[dict[str, np.ndarray]]:
    import torch

    generator = torch.Generator().manual_seed(1)
    values = [torch.randn(e.shape, generator=generator).numpy() for e in model.example_inputs((n,))]
    names = (model.input_name, *model.context_names)
    return [{name: v[i : i + 1] for name, v in zip(names, values, strict=True)} for i in range(n)]


def bench(name: str, workdir: Path, args: argparse.Namespace) -> None:
    import torch

    from edgeexit.compile import create_model, export
    from edgeexit.runtime import Engine
    from edgeexit.runtime.sessions import load_session

    torch.manual_seed(0)
    model = create_model(name).eval()
    shape = (1, *model.example_inputs((1,))[0].shape[1:])
    package = export(model, shape, workdir / name, monolithic=True)
    manifest = package.manifest
    engine = Engine(package, threads=args.threads, threshold=1.01, cache_dir=None)  # full depth: no exit fires
    monolithic = load_session(package.path(manifest.monolithic), args.threads)
    outputs = [monolithic.get_outputs()[-1].name]
    feeds = _feeds(model, args.samples)
    single = not model.context_names

    def segmented() -> float:
        started = time.perf_counter()
        for feed in feeds:
            engine.run(feed[model.input_name] if single else feed)
        return (time.perf_counter() - started) * 1e3 / len(feeds)

    def whole() -> float:
        started = time.perf_counter()
        for feed in feeds:
            monolithic.run(outputs, feed)
        return (time.perf_counter() - started) * 1e3 / len(feeds)

    segmented(), whole()  # warm-up
    seg_ms, mono_ms = [], []
    for _ in range(args.rounds):
        seg_ms.append(segmented())
        mono_ms.append(whole())
    seg, mono = statistics.median(seg_ms), statistics.median(mono_ms)
    crossing = [
        f"{len(s.boundary)} tensor(s), {s.hidden_bytes / 1024:.1f} KiB" for s in manifest.segments if s.hidden_bytes
    ]
    chain = "bound chain" if engine._walker.chain is not None else "segment by segment"
    print(
        f"| {name} | {len(manifest.segments)} | {'; '.join(crossing)} | {mono:.3f} | {seg:.3f} | "
        f"**{seg / mono:.3f}** | {chain} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"batch 1, full depth, {args.samples} samples x {args.rounds} rounds, {args.threads} thread(s), medians")
    print("| model | segments | crossing each boundary | monolithic ms | segmented ms | ratio | engine path |")
    print("| --- | ---: | --- | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory(prefix="bench-graphs-") as scratch:
        for name in args.models:
            bench(name, Path(scratch), args)


if __name__ == "__main__":
    import _tool  # beside this script

    _tool.run(main)
