"""server/k8s/ and server/README.md's Triton procedure, checked offline.

Why: a manifest the API server rejects, or whose parts disagree (a probe on a port nothing listens on, a
grace period shorter than the drain, a Service that selects no pod, a flag `edgeexit serve` does not
know), fails only on a cluster, long after the change that broke it. So:

- deployment.yaml, service.yaml and hpa.yaml are validated against Kubernetes' own JSON schemas for one
  release (``KUBERNETES_VERSION``), strict (unknown fields fail, as ``kubectl apply`` rejects them). The
  schemas ship inside kubernetes-validate: no cluster, no network.
- kserve/inferenceservice.yaml is a custom resource kubernetes-validate does not know: it is validated
  against the v1beta1 schema of KServe's own CRD, vendored in tests/data/kserve/ (see its README).
- The cross-references no schema sees are checked one by one, each test saying which.
- server/README.md's Triton procedure names an image tag, Triton flags, ``edgeexit`` commands, a Python
  snippet and tests: each is checked against the manifests, the CLI's ``--help`` and the code.

Nothing here touches the network: ``_no_network`` makes any socket connection or name lookup fail.
"""

from __future__ import annotations

import ast
import copy
import functools
import inspect
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "server" / "k8s"
DOCKERFILE = ROOT / "server" / "Dockerfile"
SERVER_README = ROOT / "server" / "README.md"
KSERVE_SCHEMA = Path(__file__).resolve().parent / "data" / "kserve" / "inferenceservice-v1beta1.schema.json"
KSERVE_SCHEMA_README = KSERVE_SCHEMA.with_name("README.md")

#: The Kubernetes release the manifests are validated for: the oldest still common on managed clusters
#: that has everything they use (gRPC probes are GA since 1.27, autoscaling/v2 since 1.23).
KUBERNETES_VERSION = "1.30"
#: The oldest Triton container whose ONNX Runtime (1.18, per Triton's build.py at v2.46.0) reads ONNX IR
#: version 10, what today's exports write (server/README.md, step 1).
MIN_TRITON = (24, 5)
#: KServe's rule for InferenceService names (pkg/apis/serving/v1beta1/inference_service_validation.go).
ISVC_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
#: The predictor's implementations, of which KServe accepts exactly one.
PREDICTOR_IMPLEMENTATIONS = (
    "model", "triton", "onnx", "sklearn", "xgboost", "lightgbm", "pytorch", "tensorflow", "paddle", "pmml",
    "huggingface", "containers",
)  # fmt: skip
FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection or DNS lookup from this process, so "offline" is enforced, not assumed (the
    validators must use the schemas on disk, not fetch them)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("tests/test_k8s_manifests.py runs offline: no network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ------------------------------------------------------------------------------------------ loading


def load(relative: str) -> dict[str, Any]:
    """The one YAML document in server/k8s/<relative> (one object per file keeps `kubectl apply -f` and
    these tests simple)."""
    documents = [d for d in yaml.safe_load_all((K8S / relative).read_text(encoding="utf-8")) if d is not None]
    assert len(documents) == 1, f"{relative} holds {len(documents)} documents; expected one"
    return documents[0]


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return load("deployment.yaml")


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    return load("service.yaml")


@pytest.fixture(scope="module")
def hpa() -> dict[str, Any]:
    return load("hpa.yaml")


@pytest.fixture(scope="module")
def isvc() -> dict[str, Any]:
    return load("kserve/inferenceservice.yaml")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the pod runs one container: edgeexit serve"
    return containers[0]


def command_line(deployment: dict[str, Any]) -> list[str]:
    """What the kubelet runs: the container's command (the image's ENTRYPOINT, spelled out) + args."""
    spec = container(deployment)
    return [str(token) for token in [*spec["command"], *spec["args"]]]


def flag_values(tokens: list[str]) -> dict[str, str]:
    """``--flag value`` pairs (and ``--flag=value``). Every `edgeexit serve` flag but --help takes a value."""
    found: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--"):
            name, eq, value = token.partition("=")
            if not eq:
                i += 1
                value = tokens[i]
            found[name] = value
        i += 1
    return found


def positionals(tokens: list[str]) -> list[str]:
    """The arguments that are no flag and no flag's value (after ``edgeexit serve``)."""
    found: list[str] = []
    i = 2  # edgeexit serve
    while i < len(tokens):
        if tokens[i].startswith("--"):
            i += 1 if "=" in tokens[i] else 2
            continue
        found.append(tokens[i])
        i += 1
    return found


def mount_of(deployment: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volumeMount, volume) of the mount holding ``path``: the longest mountPath that contains it."""
    mounts = [m for m in container(deployment)["volumeMounts"] if Path(path).is_relative_to(m["mountPath"])]
    assert mounts, f"{path} is on no mounted volume (the root filesystem is read-only)"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    return mount, volume


def port_named(deployment: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container(deployment)["ports"] if p["name"] == name]
    return int(port)


def dockerfile() -> dict[str, str]:
    """server/Dockerfile's instructions by keyword (the last one wins, as in Docker)."""
    found: dict[str, str] = {}
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword.isupper() and not line.startswith("#"):
            found[keyword] = rest.strip()
    return found


@functools.cache
def help_flags(subcommand: str) -> frozenset[str]:
    """Every ``--flag`` in ``edgeexit <subcommand> --help``: the real CLI in a subprocess, so the flags
    are what a user can pass, not what a test imagines."""
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    result = subprocess.run(
        [sys.executable, "-m", "edgeexit", subcommand, "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return frozenset(FLAG.findall(result.stdout))


# ------------------------------------------------------------------- Kubernetes' own schemas


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "hpa.yaml"])
def test_each_manifest_is_valid_for_the_kubernetes_release(name: str) -> None:
    """Strict validation (unknown fields fail) against the schemas of exactly ``KUBERNETES_VERSION``,
    which the installed kubernetes-validate must ship (it would otherwise fall back to an older one)."""
    shipped = {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}
    assert KUBERNETES_VERSION in shipped, f"kubernetes-validate {kubernetes_validate.__version__} ships {shipped}"
    assert kubernetes_validate.validate(load(name), KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_a_misspelled_field_fails_the_validation(deployment: dict[str, Any]) -> None:
    """The validation is live: a typo that a lax check would let through (and the API server would
    refuse, or silently drop) fails here."""
    broken = copy.deepcopy(deployment)
    spec = container(broken)
    spec["readinesProbe"] = spec.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


# ------------------------------------------------------------------- what no schema sees


def test_the_service_selects_the_deployments_pods(deployment: dict[str, Any], service: dict[str, Any]) -> None:
    """A selector that matches no pod gives a Service with no endpoints: every call refused, no error
    anywhere. The Deployment's own selector must match its template too, or the API server refuses it."""
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    names = {p["name"] for p in container(deployment)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names, "targetPort names a container port"
    (grpc,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc["appProtocol"] == "kubernetes.io/h2c", "plaintext gRPC is HTTP/2 with prior knowledge"


def test_the_autoscaler_scales_the_deployment_by_its_cpu_request(
    deployment: dict[str, Any], hpa: dict[str, Any]
) -> None:
    """The HPA names the Deployment; CPU utilisation is a percentage of the CPU request, so the request
    must be set; and the Deployment leaves `replicas` to the HPA (`kubectl apply` would reset it)."""
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert "replicas" not in deployment["spec"]
    (metric,) = hpa["spec"]["metrics"]
    assert (metric["type"], metric["resource"]["name"], metric["resource"]["target"]["type"]) == (
        "Resource",
        "cpu",
        "Utilization",
    )
    assert "cpu" in container(deployment)["resources"]["requests"]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], "two pods at least: drains and upgrades"


def test_listen_the_grpc_port_and_the_probes_agree(deployment: dict[str, Any]) -> None:
    """--listen, the container port named grpc and every gRPC probe name one port, on all interfaces:
    a probe on another port kills healthy pods, a server on 127.0.0.1 is unreachable from the Service."""
    host, _, port = flag_values(command_line(deployment))["--listen"].rpartition(":")
    assert host == "0.0.0.0"
    assert int(port) == port_named(deployment, "grpc")
    spec = container(deployment)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["grpc"]["port"] == int(port), f"{probe} checks grpc.health.v1 on --listen's port"
        assert "service" not in spec[probe]["grpc"], "service '' is the server's overall health"


def test_the_metrics_port_and_the_scrape_annotations_agree(deployment: dict[str, Any], service: dict[str, Any]) -> None:
    """--metrics-port, the container port named metrics, the Service's metrics port and the Prometheus
    annotations name one port: otherwise Prometheus scrapes nothing and says so only in its own UI."""
    port = int(flag_values(command_line(deployment))["--metrics-port"])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert port_named(deployment, "metrics") == port
    (metrics,) = [p for p in service["spec"]["ports"] if p["name"] == "metrics"]
    assert metrics["port"] == port


def test_the_container_runs_what_the_image_runs_as_its_user(deployment: dict[str, Any]) -> None:
    """The command repeats server/Dockerfile's ENTRYPOINT (so the ports are visible in the manifest and
    cannot drift from the image), and the pod's numeric user is the image's (runAsNonRoot needs one)."""
    instructions = dockerfile()
    assert container(deployment)["command"] == json.loads(instructions["ENTRYPOINT"])
    uid, _, gid = instructions["USER"].partition(":")
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid))
    assert pod["runAsNonRoot"] is True
    key, _, value = instructions["ENV"].partition("=")
    env = {e["name"]: e["value"] for e in container(deployment)["env"]}
    assert env[key] == value, "the manifest's package cache is the image's"


def test_the_grace_period_covers_the_drain(deployment: dict[str, Any]) -> None:
    """On SIGTERM the server drains for up to --grace-s; the kubelet sends SIGKILL
    terminationGracePeriodSeconds after termination starts, which includes the preStop pause. Shorter,
    and in-flight requests die mid-drain. Liveness must not kill a draining pod (health is NOT_SERVING)."""
    pod = deployment["spec"]["template"]["spec"]
    grace_s = float(flag_values(command_line(deployment))["--grace-s"])
    pre_stop = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + grace_s
    liveness = container(deployment)["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > pod["terminationGracePeriodSeconds"]


def test_the_package_is_read_only_and_the_cache_writable(deployment: dict[str, Any]) -> None:
    """Every path the command reads lies on a read-only mount (the package on its claim, the tokens on
    their Secret); the root filesystem is read-only, so the package cache a tar unpacks into must lie on a
    writable emptyDir."""
    tokens = command_line(deployment)
    (package,) = positionals(tokens)
    mount, volume = mount_of(deployment, package)
    assert mount["readOnly"] is True
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    mount, volume = mount_of(deployment, flag_values(tokens)["--token-file"])
    assert mount["readOnly"] is True
    assert "secret" in volume
    spec = container(deployment)
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    cache = {e["name"]: e["value"] for e in spec["env"]}["EDGEEXIT_PACKAGE_CACHE"]
    mount, volume = mount_of(deployment, cache)
    assert not mount.get("readOnly", False)
    assert "emptyDir" in volume


def test_every_flag_the_deployment_passes_exists(deployment: dict[str, Any]) -> None:
    """A flag `edgeexit serve` does not know makes the container exit at start (CrashLoopBackOff)."""
    tokens = command_line(deployment)
    assert tokens[:2] == ["edgeexit", "serve"]
    passed = {token.partition("=")[0] for token in tokens if token.startswith("--")}
    assert passed - help_flags("serve") == set()


# ------------------------------------------------------------------------ KServe


def strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object schema that lists properties and
    does not keep unknown fields: what the API server's strict field validation (`kubectl apply`'s
    default) does with a custom resource. JSON Schema alone would accept any misspelled field."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    found = dict(schema)
    for key in ("properties", "patternProperties", "$defs"):
        if key in found:
            found[key] = {name: strict(sub) for name, sub in found[key].items()}
    for key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
        if isinstance(found.get(key), dict | list):
            found[key] = strict(found[key])
    keeps_unknown = found.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in found and "additionalProperties" not in found and not keeps_unknown:
        found["additionalProperties"] = False
    return found


@pytest.fixture(scope="module")
def kserve_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(KSERVE_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(strict(schema))


def test_the_inferenceservice_matches_kserves_schema(
    isvc: dict[str, Any], kserve_validator: jsonschema.Draft202012Validator
) -> None:
    """What KServe's CRD accepts (strictly): right field names, types and nesting."""
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in kserve_validator.iter_errors(isvc)]
    assert errors == []


def test_kserves_schema_rejects_a_misspelled_field(
    isvc: dict[str, Any], kserve_validator: jsonschema.Draft202012Validator
) -> None:
    """The vendored schema is live: a typo in the predictor fails, as the API server would refuse it."""
    broken = copy.deepcopy(isvc)
    broken["spec"]["predictor"]["model"]["storageURI"] = broken["spec"]["predictor"]["model"].pop("storageUri")
    assert any("storageURI" in e.message for e in kserve_validator.iter_errors(broken))


def test_the_vendored_schema_names_its_source() -> None:
    """Whoever updates the schema must be able to tell where it came from: the JSON and its README agree
    on the repository, tag and commit."""
    source = json.loads(KSERVE_SCHEMA.read_text(encoding="utf-8"))["_source"]
    assert source["repository"] == "kserve/kserve"
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    note = KSERVE_SCHEMA_README.read_text(encoding="utf-8")
    assert source["commit"] in note
    assert f"`{source['tag']}`" in note
    assert source["path"] in note


def triton_version(tag: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d\d)\.(\d\d)-py3", tag)
    assert match, f"{tag!r} is not a Triton container tag (yy.mm-py3)"
    return int(match[1]), int(match[2])


def test_the_inferenceservice_serves_the_deployments_tails_on_a_triton_that_reads_them(
    isvc: dict[str, Any], deployment: dict[str, Any]
) -> None:
    """KServe's own rules the schema does not carry (a DNS-1035 name, exactly one implementation), and
    ours: Triton's repository format, gRPC on the h2c port, a Triton new enough for the tails' ONNX IR
    version, and the same tails/ as the Deployment serves (its claim, its package directory)."""
    assert ISVC_NAME.fullmatch(isvc["metadata"]["name"])
    predictor = isvc["spec"]["predictor"]
    assert [key for key in PREDICTOR_IMPLEMENTATIONS if key in predictor] == ["model"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "triton"
    assert model["protocolVersion"] == "grpc-v2"
    assert model["ports"] == [{"name": "h2c", "protocol": "TCP", "containerPort": 9000}]
    assert triton_version(model["runtimeVersion"]) >= MIN_TRITON
    (package,) = positionals(command_line(deployment))
    mount, volume = mount_of(deployment, package)
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert model["storageUri"] == f"pvc://{claim}/{Path(package).relative_to(mount['mountPath'])}/tails"


# ------------------------------------------------------------------------ server/README.md


def readme() -> str:
    return SERVER_README.read_text(encoding="utf-8")


def code_blocks(language: str) -> list[str]:
    """The README's fenced blocks in ``language``, dedented (list items indent theirs)."""
    fence = re.compile(rf"^[ \t]*```{language}\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(body) for body in fence.findall(readme())]


def shell_commands() -> list[list[str]]:
    """Every command line of the README's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line, comments=True))
    return commands


def test_the_readme_names_the_kserve_manifests_triton_and_its_flags(isvc: dict[str, Any]) -> None:
    """The procedure's `docker run` and the InferenceService run the same Triton (at least 24.05) with the
    same keepalive flags, so what the README says was checked is what the manifest deploys."""
    model = isvc["spec"]["predictor"]["model"]
    tags = set(re.findall(r"nvcr\.io/nvidia/tritonserver:([0-9.]+-py3)", readme()))
    assert tags == {model["runtimeVersion"]}
    (docker,) = [c for c in shell_commands() if c[:2] == ["docker", "run"]]
    assert docker[docker.index("tritonserver") + 1] == "--model-repository=/models"
    assert [t for t in docker if t.startswith("--grpc-")] == model["args"]


def test_every_edgeexit_command_in_the_readme_takes_its_flags() -> None:
    """Each `edgeexit <subcommand> ... --flag` the README shows exists in that subcommand's --help."""
    commands = [c for c in shell_commands() if c[0] == "edgeexit"]
    assert {c[1] for c in commands} >= {"serve", "run", "verify", "inspect"}
    for command in commands:
        flags = {token.partition("=")[0] for token in command if token.startswith("--")}
        assert flags - help_flags(command[1]) == set(), " ".join(command)


def test_edgeexit_run_still_has_no_side_inputs_flag() -> None:
    """The README says the CLI cannot send int8 side inputs as tensors (so it uses fp16 with Triton); a
    flag for it, on `edgeexit run` or in the daemon's config, would make that advice wrong."""
    assert not [flag for flag in help_flags("run") if "side" in flag]
    assert "side_input" not in (ROOT / "edgeexit" / "daemon" / "config.py").read_text(encoding="utf-8")


def test_the_readme_python_calls_take_their_keywords() -> None:
    """The snippet of step 5 parses, and every keyword it passes to TailClient and OffloadRunner is one
    they take (side_inputs "tensors" included), without running it (it needs a Triton)."""
    from edgeexit.device import OffloadRunner, TailClient
    from edgeexit.transport.wire import SIDE_INPUTS

    classes = {"TailClient": TailClient, "OffloadRunner": OffloadRunner}
    called: set[str] = set()
    for block in code_blocks("python"):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes:
                accepted = inspect.signature(classes[node.func.id]).parameters
                assert {k.arg for k in node.keywords} <= set(accepted), ast.unparse(node)
                for keyword in node.keywords:
                    if keyword.arg == "side_inputs":
                        assert ast.literal_eval(keyword.value) == "tensors"
                        assert "tensors" in SIDE_INPUTS
                called.add(node.func.id)
    assert called == set(classes)


def test_the_tests_the_readme_cites_exist() -> None:
    """The procedure points at tests as its offline checks: each file exists and each named test is
    defined in it, so a renamed test cannot leave the README citing nothing."""
    cited = set(re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", readme()))
    assert cited
    for file, test in cited:
        source = (ROOT / file).read_text(encoding="utf-8")
        if test:
            assert re.search(rf"^def {test}\(", source, re.MULTILINE), f"{file} has no {test}"
