"""Where a segmented text encoder's extra time goes, against its monolithic graph, in one run.

    python tools/bench_text_layout.py PKG [--samples 40 --rounds 6]

PKG is an exported text package with ``monolithic.onnx`` (e.g. ``tools/bench_models.py --model
minilm``'s). Real tweets, one at a time, unpadded, batch 1, one thread. Every variant runs on
the same sample before the next sample is taken, in a rotating order, so a shared machine's load
hits them alike. Times are both wall clock and the thread's CPU time (``time.thread_time``: what
another process on the same core does not add); each is the median over samples of the per-sample
median over rounds, and the ratio is to the first monolithic session's. Sessions created
independently from the same file differ by a few percent here (where their memory lands), so
the plain variants come twice (A, B): a difference smaller than A vs B is noise.

Variants, each isolating one cost:

- ``chain``: the segment sessions (the package's own options) chained with plain
  ``session.run``, the hidden state passed as the numpy array the last run returned.
- ``chain, no heads``: the same with the exit heads cut out of segments 0..n-2 (what the
  heads add; the monolithic graph computes every head too, so this is a floor, not a fair cut).
- ``chain, shared arena``: the sessions allocate from one arena registered with the ORT
  environment (``session.use_env_allocators``), so the activations of every segment reuse the
  same memory, as they do inside one graph.
- ``engine (graph score)``: ``Engine.run`` at full depth, the exits scored by the graph's own
  ``exit_k_score`` (temperature 1). The engine's sessions share one arena (its default).
- ``engine (as packaged)``: ``Engine.run`` at full depth with the manifest's calibration (at
  full depth the engine scores no exit but the final one, whatever the temperatures).
- ``engine (as packaged), own arenas``: the same with its sessions swapped for ones that each
  keep their own arena (the engine before it shared one).
- ``monolithic, shared arena``: the whole graph on the shared arena.
- ``engine python only``: ``Engine.run`` with every session replaced by one returning the
  outputs it recorded for that sample: only the engine's own Python work.
- ``n trivial sessions``: n one-node (Identity) graphs on the hidden state and the mask: what
  n ``session.run`` calls cost with (nearly) nothing to compute.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edgeexit.package import open_package
from edgeexit.runtime import Engine
from edgeexit.runtime.sessions import session_options
from edgeexit.runtime.text import TextEncoder

Sample = Mapping[str, np.ndarray]
Runner = Callable[[Sample], object]


def _session(path: Path, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), options or session_options(1), providers=["CPUExecutionProvider"])


def _chain(sessions: list[ort.InferenceSession], context: str = "attention_mask") -> Runner:
    names = [s.get_inputs()[0].name for s in sessions]

    def run(x: Sample) -> object:
        hidden, mask = x[names[0]], x[context]
        for name, session in zip(names, sessions, strict=True):
            hidden = session.run(None, {name: hidden, context: mask})[0]
        return hidden

    return run


def _one(session: ort.InferenceSession) -> Runner:
    return lambda x: session.run(None, dict(x))


def _headless(paths: list[Path], workdir: Path) -> list[ort.InferenceSession]:
    """Segments 0..n-2 cut to their hidden output (the exit head pruned), the last one whole."""
    sessions = []
    for k, path in enumerate(paths[:-1]):
        graph = onnx.load(str(path), load_external_data=False).graph
        hidden = graph.output[0].name  # the manifest's hidden output comes first
        target = workdir / f"headless_{k}.onnx"
        onnx.utils.extract_model(str(path), str(target), [i.name for i in graph.input], [hidden])
        sessions.append(_session(target))
    return [*sessions, _session(paths[-1])]


def _trivial(workdir: Path, width: int) -> ort.InferenceSession:
    nodes = [helper.make_node("Identity", ["h"], ["o"]), helper.make_node("Identity", ["m"], ["o2"])]
    graph = helper.make_graph(
        nodes,
        "trivial",
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [None, None, width]),
            helper.make_tensor_value_info("m", TensorProto.INT64, [None, None]),
        ],
        [
            helper.make_tensor_value_info("o", TensorProto.FLOAT, [None, None, width]),
            helper.make_tensor_value_info("o2", TensorProto.INT64, [None, None]),
        ],
    )
    path = workdir / "trivial.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return _session(path)


class _Replay:
    """Stands in for a session: returns what the real one gave for the current sample."""

    def __init__(self) -> None:
        self.outputs: list[np.ndarray] = []

    def run(self, names: object, feeds: object) -> list[np.ndarray]:
        return self.outputs


def _graph_scored(engine: Engine) -> None:
    """Score every exit with the graph's own exit_k_score (temperature 1), as before calibration."""
    engine.rules = tuple(
        dataclasses.replace(rule, temperature=1.0, graph_score=spec.score) if spec.score else rule
        for rule, spec in zip(engine.rules, engine.exits, strict=True)
    )


def _python_only(package: Path, samples: list[Sample], graph_score: bool) -> tuple[Runner, Callable[[int], None]]:
    """Engine.run with replayed sessions; ``load(i)`` makes them return sample i's outputs."""
    engine = Engine(package, threads=1, threshold=math.inf, cache_dir=None)
    if graph_score:
        _graph_scored(engine)
    recorded: list[list[list[np.ndarray]]] = []
    for x in samples:
        hidden, mask, per_segment = x["input_ids"], x["attention_mask"], []
        for segment in engine.segments:
            outputs = segment.session.run(segment.output_names, {segment.input_name: hidden, "attention_mask": mask})
            per_segment.append(outputs)
            hidden = outputs[0]
        recorded.append(per_segment)
    replays = [_Replay() for _ in engine.segments]
    for segment, replay in zip(engine.segments, replays, strict=True):
        segment.session = replay  # type: ignore[assignment]

    def load(i: int) -> None:
        for replay, outputs in zip(replays, recorded[i], strict=True):
            replay.outputs = outputs

    return engine.run, load


def _shared_arena_session(path: Path) -> ort.InferenceSession:
    return _session(path, session_options(1, shared_arena=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path, help="exported text package with monolithic.onnx")
    parser.add_argument("--samples", type=int, default=40, help="test tweets, one at a time")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    from edgeexit.data.tweets import load_tweets

    package = open_package(args.package)
    manifest = package.manifest
    if manifest.monolithic is None:
        raise SystemExit(f"{args.package} has no monolithic graph; export it with monolithic=True")
    encoder = TextEncoder.from_package(package)
    texts = load_tweets().test.texts[: args.samples]
    samples: list[Sample] = [encoder.encode([t]) for t in texts]
    lengths = [x["input_ids"].shape[1] for x in samples]
    paths = [package.path(s.file) for s in manifest.segments]
    width = int(manifest.segments[0].outputs[0].shape[-1])

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        monolithic = package.path(manifest.monolithic)
        plain = Engine(package, threads=1, threshold=math.inf, cache_dir=None)
        scored = Engine(package, threads=1, threshold=math.inf, cache_dir=None)
        _graph_scored(scored)
        python_packaged, load_packaged = _python_only(args.package, samples, graph_score=False)
        python_scored, load_scored = _python_only(args.package, samples, graph_score=True)
        trivial = [_trivial(workdir, width) for _ in paths]
        tiny = np.zeros((1, 1, width), np.float32)
        variants: dict[str, Runner] = {}
        # Two of each plain variant: independently created sessions differ by a few percent
        # (memory placement), which is the noise floor any difference below must clear.
        for copy in "AB":
            variants[f"monolithic {copy}"] = _one(_session(monolithic))
        for copy in "AB":
            variants[f"chain {copy}"] = _chain([_session(p) for p in paths])
        variants["chain, no heads"] = _chain(_headless(paths, workdir))
        variants["engine (graph score)"] = scored.run
        variants["engine (as packaged)"] = plain.run
        own_arenas = Engine(package, threads=1, threshold=math.inf, cache_dir=None)
        for segment, path in zip(own_arenas.segments, paths, strict=True):
            segment.session = _session(path)  # type: ignore[attr-defined]
        variants["engine (as packaged), own arenas"] = own_arenas.run
        variants["monolithic, shared arena"] = _one(_shared_arena_session(monolithic))
        for copy in "AB":
            variants[f"chain, shared arena {copy}"] = _chain([_shared_arena_session(p) for p in paths])
        variants["engine python only (graph score)"] = python_scored
        variants["engine python only (as packaged)"] = python_packaged
        variants[f"{len(paths)} trivial sessions"] = lambda x: [
            t.run(None, {"h": tiny, "m": x["attention_mask"]}) for t in trivial
        ]

        def load(i: int) -> None:
            load_packaged(i)
            load_scored(i)

        names = list(variants)
        wall = {n: np.zeros((args.rounds, len(samples))) for n in names}
        cpu = {n: np.zeros((args.rounds, len(samples))) for n in names}
        for i, x in enumerate(itertools.islice(itertools.cycle(samples), 5)):  # warm every session
            load(i)
            for fn in variants.values():
                fn(x)
        for r in range(args.rounds):
            for i, x in enumerate(samples):
                load(i)
                shift = (i + r) % len(names)
                for name in names[shift:] + names[:shift]:
                    fn = variants[name]
                    w0, c0 = time.perf_counter(), time.thread_time()
                    fn(x)
                    cpu[name][r, i] = time.thread_time() - c0
                    wall[name][r, i] = time.perf_counter() - w0

    print(
        f"{manifest.model_name}: {len(paths)} segments, {len(samples)} tweets (median {np.median(lengths):.0f} "
        f"tokens), {args.rounds} rounds, batch 1, 1 thread, onnxruntime {ort.__version__}"
    )
    print(f"{'variant (ratio: to monolithic A)':36s} {'wall ms':>9s} {'ratio':>7s} {'cpu ms':>9s} {'ratio':>7s}")
    base_w = np.median(np.median(wall["monolithic A"], axis=0))
    base_c = np.median(np.median(cpu["monolithic A"], axis=0))
    for name in names:
        w = np.median(np.median(wall[name], axis=0))
        c = np.median(np.median(cpu[name], axis=0))
        print(f"{name:36s} {w * 1e3:9.3f} {w / base_w:7.3f} {c * 1e3:9.3f} {c / base_c:7.3f}")


if __name__ == "__main__":
    main()
