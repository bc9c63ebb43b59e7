"""The models a tail server serves: Triton-layout repositories, or packages (directories or tars) whose
``tails/`` is one.

A package is opened with ``open_package`` first, so a tail whose ``model.onnx`` does not match the
manifest's sha256 is refused before anything listens; its tails' ``package_id`` must be the
manifest's. Each (model, version) gets one ONNX Runtime session, loaded once at start-up and run
once on a zero batch of one (Triton's ``model_warmup``, always on): ONNX Runtime's first run
allocates and plans, and a device whose first offload met it (measured: 24-27 ms instead of
12-13 ms on the 96 px EfficientNet's input tail) read a busy server into its link estimate and
stayed local for its next dozen samples.

The config.pbtxt is the model's contract on the wire: its inputs (names, datatypes, per-sample
dims) are what requests are checked against, so the graph is checked against the config here,
at load time, rather than failing inside ``session.run`` on the first request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeexit.codecs import DATATYPES, ORT_TYPES
from edgeexit.errors import PackageError
from edgeexit.kserve.status import not_found
from edgeexit.manifest import MANIFEST_FILE
from edgeexit.package import open_package
from edgeexit.repository import PARAM_CODEC, PARAM_PACKAGE_ID, PLATFORM, RepositoryModel, scan_repository
from edgeexit.runtime.sessions import load_session
from edgeexit.signing import TrustedKeys
from edgeexit.transport.generated import model_config_pb2 as pb

TAILS_DIR = "tails"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the config declares it: v2 datatype and per-sample dims (no batch axis)."""

    name: str
    datatype: str
    dims: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return DATATYPES[self.datatype]

    @property
    def sample_bytes(self) -> int:
        return math.prod(self.dims) * self.dtype.itemsize

    def describe(self) -> str:
        return f"{self.name} {self.datatype} [{', '.join(['N', *map(str, self.dims)])}]"


@dataclass(frozen=True, eq=False)
class TailModel:
    """One loaded (model, version): its effective config (flags applied), wire tensors and session."""

    name: str
    version: int
    path: Path
    config: pb.ModelConfig
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    max_queue_delay_us: int
    instances: int
    session: ort.InferenceSession

    @property
    def codec(self) -> str | None:
        return _parameter(self.config, PARAM_CODEC)

    @property
    def package_id(self) -> str | None:
        return _parameter(self.config, PARAM_PACKAGE_ID)

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One session run over a whole batch (ORT releases the GIL, so call it from a worker thread)."""
        names = [spec.name for spec in self.outputs]
        return dict(zip(names, self.session.run(names, feeds), strict=True))


class ModelSet:
    """The loaded models by name and version; lookups raise NOT_FOUND naming what exists."""

    def __init__(self, models: Iterable[TailModel]) -> None:
        self._models: dict[str, dict[int, TailModel]] = {}
        for model in models:
            self._models.setdefault(model.name, {})[model.version] = model

    def __iter__(self) -> Iterator[TailModel]:
        for name in sorted(self._models):
            yield from (self._models[name][v] for v in sorted(self._models[name]))

    def __len__(self) -> int:
        return sum(len(v) for v in self._models.values())

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

    def get(self, name: str, version: str = "") -> TailModel:
        """``version`` "" means the newest loaded version, as in Triton."""
        versions = self._models.get(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise not_found(f"unknown model {name!r}; this server serves: {known}")
        if version == "":
            return versions[max(versions)]
        if version.isdigit() and int(version) in versions:
            return versions[int(version)]
        raise not_found(
            f"model {name!r} has no version {version!r}; loaded versions: {', '.join(map(str, sorted(versions)))} "
            '(or "" for the newest)'
        )


@dataclass(frozen=True)
class Source:
    """A directory to serve: a repository, or a package's ``tails/`` with the tails its manifest lists."""

    root: Path
    package_id: str | None = None
    listed: frozenset[str] | None = None  # a package's tails (hash-verified); None: a plain repository


def source_of(path: Path, trusted_keys: TrustedKeys | None = None) -> Source:
    """A package directory (it holds manifest.json) or a package tar (``edgeexit pack``; unpacked into
    the package cache) → its verified ``tails/``; any other directory as is."""
    path = Path(path)
    if path.is_file() or (path / MANIFEST_FILE).is_file():
        # verifies the signature (given trusted keys), then every hash, the tails' graphs and configs included
        package = open_package(path, trusted_keys=trusted_keys)
        manifest = package.manifest
        tails = package.root / TAILS_DIR
        if not manifest.tails or not tails.is_dir():
            raise PackageError(
                f"package {path} has no tails; re-export it with tails (edgeexit export --codecs fp32,fp16,int8) "
                "or point edgeexit serve at a model repository"
            )
        return Source(tails, manifest.package_id, frozenset(tail.model for tail in manifest.tails))
    if not path.is_dir():
        raise PackageError(
            f"{path} is not a directory; expected a package directory, a package tar (`edgeexit pack`) or a "
            "Triton model repository"
        )
    if trusted_keys is not None:
        raise PackageError(
            f"{path} is a plain model repository, which carries no signature; with trusted keys, serve signed "
            "packages (`edgeexit sign`)"
        )
    return Source(path)


def _check_listed(source: Source, found: list[RepositoryModel]) -> None:
    """In a package, serve exactly the tails the manifest hashes: an unlisted model was never verified."""
    if source.listed is None:
        return
    names = {entry.name for entry in found}
    unlisted, absent = sorted(names - source.listed), sorted(source.listed - names)
    if unlisted:
        raise PackageError(
            f"{source.root} holds {', '.join(unlisted)}, which the package's manifest does not list, so its "
            "hashes cannot be checked; re-export the package or remove the directory"
        )
    if absent:
        raise PackageError(
            f"the manifest lists tails {', '.join(absent)}, but {source.root} has no config.pbtxt and version "
            "directory for them; the package is incomplete: re-export or re-copy it"
        )


def load_models(
    sources: Sequence[Path],
    *,
    threads: int = 1,
    max_batch_size: int | None = None,
    max_queue_delay_us: int | None = None,
    trusted_keys: TrustedKeys | None = None,
) -> ModelSet:
    """Load every model of every source; flags, when given, override each config's batching.
    ``trusted_keys``: every source must be a package a trusted key signed."""
    if not sources:
        raise PackageError("no model repository or package given; expected at least one directory")
    models: list[TailModel] = []
    origin: dict[str, Path] = {}
    for path in sources:
        source = source_of(Path(path), trusted_keys)
        root = source.root
        found = scan_repository(root)
        if not found:
            raise PackageError(f"{root} holds no models; expected <model>/config.pbtxt and <model>/1/model.onnx in it")
        _check_listed(source, found)
        for entry in found:
            if entry.name in origin:
                raise PackageError(
                    f"model {entry.name!r} is in both {origin[entry.name]} and {root}; model names must be unique"
                )
            origin[entry.name] = root
            config = _effective_config(entry, source.package_id, max_batch_size, max_queue_delay_us)
            for version in _selected_versions(entry):
                models.append(_load(entry, config, version, threads))
    return ModelSet(models)


def _parameter(config: pb.ModelConfig, key: str) -> str | None:
    return config.parameters[key].string_value if key in config.parameters else None


def _effective_config(
    entry: RepositoryModel, package_id: str | None, max_batch_size: int | None, max_queue_delay_us: int | None
) -> pb.ModelConfig:
    config = pb.ModelConfig()
    config.CopyFrom(entry.config)
    where = entry.directory / "config.pbtxt"
    if not config.name:
        config.name = entry.name
    if config.platform and config.platform != PLATFORM:
        raise PackageError(f"{where}: platform {config.platform!r} is not served here; expected {PLATFORM!r}")
    config.platform = PLATFORM
    if config.max_batch_size <= 0:
        raise PackageError(
            f"{where}: max_batch_size is {config.max_batch_size}; edgeexit serve batches along the first axis, "
            "so it needs max_batch_size > 0"
        )
    if max_batch_size is not None:
        config.max_batch_size = max_batch_size
    if max_queue_delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    elif not config.HasField("dynamic_batching"):
        config.dynamic_batching.max_queue_delay_microseconds = 0  # no dynamic batching: never wait for company
    if package_id is not None:
        declared = _parameter(config, PARAM_PACKAGE_ID)
        if declared not in (None, package_id):
            raise PackageError(
                f"{where}: package_id {declared!r} differs from the package's manifest ({package_id!r}); "
                "the tail belongs to other weights: re-export the package"
            )
        config.parameters[PARAM_PACKAGE_ID].string_value = package_id
    if not config.input or not config.output:
        raise PackageError(f"{where}: declares no inputs or no outputs; expected both")
    return config


def _selected_versions(entry: RepositoryModel) -> list[int]:
    """Triton's version policy: latest N (default 1), all, or specific versions."""
    policy = entry.config.version_policy
    available = sorted(entry.versions)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return available
    if choice == "specific":
        missing = [v for v in policy.specific.versions if v not in entry.versions]
        if missing:
            raise PackageError(
                f"{entry.directory}: version_policy asks for versions {missing} that have no model file; "
                f"found {available}"
            )
        return sorted(set(policy.specific.versions))
    count = max(1, policy.latest.num_versions) if choice == "latest" else 1
    return available[-count:]


def _specs(tensors: Iterable[pb.ModelInput | pb.ModelOutput], where: Path) -> tuple[TensorSpec, ...]:
    specs = []
    for tensor in tensors:
        datatype = pb.DataType.Name(tensor.data_type).removeprefix("TYPE_")
        if datatype not in ORT_TYPES:
            raise PackageError(
                f"{where}: tensor {tensor.name!r} has data_type {pb.DataType.Name(tensor.data_type)}; "
                f"edgeexit serve handles {', '.join('TYPE_' + d for d in ORT_TYPES)}"
            )
        dims = tuple(int(d) for d in tensor.dims)
        if any(d < 1 for d in dims):
            raise PackageError(f"{where}: tensor {tensor.name!r} has dims {list(dims)}; expected fixed, positive dims")
        specs.append(TensorSpec(tensor.name, datatype, dims))
    return tuple(specs)


def _load(entry: RepositoryModel, config: pb.ModelConfig, version: int, threads: int) -> TailModel:
    where = entry.directory / "config.pbtxt"
    inputs = _specs(config.input, where)
    outputs = _specs(config.output, where)
    path = entry.versions[version]
    session = load_session(path, threads)
    _check_graph(path, session.get_inputs(), inputs, "input")
    _check_graph(path, session.get_outputs(), outputs, "output")
    _warm_up(session, inputs, path)
    instances = sum(group.count for group in config.instance_group) or 1
    return TailModel(
        name=entry.name,
        version=version,
        path=path,
        config=config,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=config.max_batch_size,
        max_queue_delay_us=int(config.dynamic_batching.max_queue_delay_microseconds),
        instances=instances,
        session=session,
    )


def _warm_up(session: ort.InferenceSession, inputs: Sequence[TensorSpec], path: Path) -> None:
    """One run on zeros of batch 1, before the server listens; a graph that cannot run is refused here."""
    feeds = {spec.name: np.zeros((1, *spec.dims), dtype=spec.dtype) for spec in inputs}
    try:
        session.run(None, feeds)
    except Exception as err:  # ONNX Runtime raises untyped errors
        raise PackageError(
            f"{path}: the model fails on a zero batch of one ({type(err).__name__}: {str(err)[:300]}); expected a "
            "graph that runs on its config's inputs: re-export the package"
        ) from err


def _check_graph(path: Path, graph: Sequence[ort.NodeArg], specs: tuple[TensorSpec, ...], kind: str) -> None:
    """The config must describe the graph: same input names, datatypes and dims (batch axis first)."""
    by_name = {arg.name: arg for arg in graph}
    if kind == "input" and set(by_name) != {s.name for s in specs}:
        raise PackageError(
            f"{path}: the graph's inputs are {sorted(by_name)} but config.pbtxt declares "
            f"{sorted(s.name for s in specs)}; expected the same names"
        )
    for spec in specs:
        arg = by_name.get(spec.name)
        if arg is None:
            raise PackageError(f"{path}: config.pbtxt declares {kind} {spec.name!r}, which the graph does not have")
        if arg.type != ORT_TYPES[spec.datatype]:
            raise PackageError(
                f"{path}: {kind} {spec.name!r} is {arg.type} in the graph but {spec.datatype} in config.pbtxt"
            )
        shape = list(arg.shape)
        fixed = [d if isinstance(d, int) else None for d in shape[1:]]
        if len(shape) != len(spec.dims) + 1 or any(
            g is not None and g != d for g, d in zip(fixed, spec.dims, strict=False)
        ):
            raise PackageError(
                f"{path}: {kind} {spec.name!r} has shape {shape} in the graph; config.pbtxt implies "
                f"[batch, {', '.join(map(str, spec.dims))}]"
            )
