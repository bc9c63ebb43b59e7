"""Loading repositories and packages: the config must describe the graph, names are unique,
Triton's version policy, flags over config.pbtxt, and a package serves only verified tails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeexit.errors import PackageError
from edgeexit.repository import read_config, tail_config, write_config
from edgeexit.server import RequestError, load_models


def test_a_repository_loads_every_model_with_its_config(tiny_repo: Path, wire) -> None:
    models = load_models([tiny_repo])
    assert models.names() == [wire.tail("fp32"), wire.tail("fp16"), wire.tail("int8")]
    int8 = models.get(wire.tail("int8"))
    assert (int8.codec, int8.package_id, int8.max_batch_size, int8.max_queue_delay_us) == (
        "int8",
        wire.package_id,
        8,
        1000,
    )
    assert [(s.name, s.datatype, s.dims) for s in int8.inputs] == [
        ("hidden", "UINT8", (2, 3)),
        ("scale", "FP32", (1,)),
        ("zero_point", "UINT8", (1,)),
    ]
    assert int8.instances == 1


def test_flags_override_the_config(tiny_repo: Path, wire) -> None:
    model = load_models([tiny_repo], max_batch_size=2, max_queue_delay_us=5).get(wire.tail("fp32"))
    assert (model.max_batch_size, model.max_queue_delay_us) == (2, 5)
    assert model.config.max_batch_size == 2  # ModelConfig reports what the server does


def test_version_policy(tmp_path: Path, wire) -> None:
    repo = wire.write_repository(tmp_path / "repo", codecs=["fp32"], versions=[1, 2, 3])
    name = wire.tail("fp32")
    models = load_models([repo])
    assert models.versions(name) == [3]  # Triton's default: the latest version only
    assert models.get(name).version == 3
    with pytest.raises(RequestError, match="no version '1'; loaded versions: 3"):
        models.get(name, "1")
    config_file = repo / name / "config.pbtxt"
    config = read_config(config_file)
    config.version_policy.all.SetInParent()
    write_config(repo / name, config)
    assert load_models([repo]).versions(name) == [1, 2, 3]
    config.version_policy.specific.versions[:] = [1, 3]
    write_config(repo / name, config)
    assert load_models([repo]).versions(name) == [1, 3]
    config.version_policy.specific.versions[:] = [4]
    write_config(repo / name, config)
    with pytest.raises(PackageError, match=r"versions \[4\] that have no model file"):
        load_models([repo])


def test_model_names_must_be_unique_across_sources(tiny_repo: Path, tmp_path: Path, wire) -> None:
    other = wire.write_repository(tmp_path / "other", codecs=["fp16"])
    with pytest.raises(PackageError, match=f"model '{wire.tail('fp16')}' is in both"):
        load_models([tiny_repo, other])


def broken_repo(tmp_path: Path, wire, **changes: object) -> Path:
    repo = wire.write_repository(tmp_path / "repo", codecs=["fp32"])
    settings = {
        "name": wire.tail("fp32"),
        "codec": "fp32",
        "boundary": 0,
        "hidden_dims": wire.dims,
        "num_classes": wire.classes,
        "package_id": wire.package_id,
        **changes,
    }
    write_config(repo / wire.tail("fp32"), tail_config(**settings))
    return repo


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_dims": (3, 2)}, r"has shape \['N', 2, 3\] in the graph; config.pbtxt implies \[batch, 3, 2\]"),
        ({"hidden_dims": (6,)}, r"config.pbtxt implies \[batch, 6\]"),
        ({"codec": "fp16"}, r"input 'hidden' is tensor\(float\) in the graph but FP16 in config.pbtxt"),
        ({"codec": "int8"}, r"the graph's inputs are \['hidden'\] but config.pbtxt declares"),
        ({"max_batch_size": 0}, r"max_batch_size is 0; .* needs max_batch_size > 0"),
    ],
)
def test_a_config_that_does_not_describe_its_graph_is_refused(
    tmp_path: Path, wire, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(PackageError, match=message):
        load_models([broken_repo(tmp_path, wire, **changes)])


def test_an_unknown_output_name_is_refused(tmp_path: Path, wire) -> None:
    repo = wire.write_repository(tmp_path / "repo", codecs=["fp32"])
    config = read_config(repo / wire.tail("fp32") / "config.pbtxt")
    config.output[0].name = "probabilities"
    write_config(repo / wire.tail("fp32"), config)
    with pytest.raises(PackageError, match="declares output 'probabilities', which the graph does not have"):
        load_models([repo])


def test_empty_and_missing_sources_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackageError, match=r"holds no models; expected <model>/config\.pbtxt"):
        load_models([tmp_path / "empty"])
    with pytest.raises(PackageError, match="is not a directory"):
        load_models([tmp_path / "absent"])
    with pytest.raises(PackageError, match="no model repository or package given"):
        load_models([])


def test_a_graph_runs_with_the_config_batch_axis(tiny_repo: Path, wire, hidden: np.ndarray) -> None:
    model = load_models([tiny_repo]).get(wire.tail("fp16"))
    payload = wire.encode("fp16", hidden)
    out = model.run(payload.tensors())
    expected = wire.reference(tiny_repo / wire.tail("fp16") / "1" / "model.onnx", payload)
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-6, atol=1e-6)
    assert onnx.load(str(model.path)).graph.output[0].name == "logits"


def test_a_tail_that_cannot_run_is_refused_at_load(tmp_path: Path, wire) -> None:
    """Each tail is run once on zeros when it loads (a warm-up, so the first request does not pay
    ONNX Runtime's first-run setup): a graph that fails there is refused before the server listens,
    not on a device's first offload. This one reshapes its input to the (zero) sum of its values."""
    from onnx import TensorProto, helper

    repo = wire.write_repository(tmp_path / "repo", codecs=["fp32"])
    hidden = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["N", *wire.dims])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", wire.classes])
    nodes = [
        helper.make_node("ReduceSum", ["hidden"], ["total"], keepdims=0),
        helper.make_node("Cast", ["total"], ["count"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["count", "axis0"], ["rows"]),
        helper.make_node("Concat", ["rows", "rest"], ["shape"], axis=0),
        helper.make_node("Reshape", ["hidden", "shape"], ["logits"], allowzero=1),  # [0, -1]: no such shape
    ]
    constants = [helper.make_tensor("axis0", TensorProto.INT64, [1], [0]),
                 helper.make_tensor("rest", TensorProto.INT64, [1], [-1])]  # fmt: skip
    graph = helper.make_graph(nodes, "fails_on_zeros", [hidden], [logits], initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(repo / wire.tail("fp32") / "1" / "model.onnx"))
    with pytest.raises(PackageError, match=r"fails on a zero batch of one .*re-export the package"):
        load_models([repo])
