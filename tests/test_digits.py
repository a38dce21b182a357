"""Task accuracy on scikit-learn's digits: training, lossless and lossy codecs at every chain cut."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn")
torch = pytest.importorskip("torch")

from splitdnn import codec  # noqa: E402
from splitdnn.digits import (  # noqa: E402
    DigitsCNN,
    digits_chain_cuts,
    evaluate_split,
    load_digits_split,
    trace_digits_model,
    train_digits_model,
)
from splitdnn.errors import CodecError, PlanError  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    model, x, y = train_digits_model(seed=0)
    traced = trace_digits_model(model)
    with torch.inference_mode():
        logits = traced.module(x)
    return model, traced, x, y, logits


def _accuracy(logits, y) -> float:
    return float((logits.argmax(dim=1) == y).float().mean())


def test_split_is_fixed_and_stratified():
    tr_x, tr_y, te_x, te_y = load_digits_split()
    assert tr_x.shape == (1347, 1, 8, 8) and te_x.shape == (450, 1, 8, 8)
    assert tr_x.dtype == torch.float32 and float(tr_x.min()) == 0.0 and float(tr_x.max()) == 1.0
    assert sorted(torch.unique(te_y).tolist()) == list(range(10))
    again = load_digits_split()
    assert torch.equal(again[2], te_x) and torch.equal(again[3], te_y)


def test_training_reaches_a_sensible_accuracy(trained):
    model, _, x, y, logits = trained
    assert isinstance(model, DigitsCNN) and not model.training
    assert _accuracy(logits, y) >= 0.95
    assert len(x) == len(y) == 450


def test_training_is_deterministic_for_a_seed():
    a, _, _ = train_digits_model(seed=3, epochs=1)
    b, _, _ = train_digits_model(seed=3, epochs=1)
    c, _, _ = train_digits_model(seed=4, epochs=1)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_chain_cuts_of_the_cnn(trained):
    _, traced, *_ = trained
    assert digits_chain_cuts(traced) == [
        "conv1", "relu1", "conv2", "relu2", "pool", "flatten", "fc1", "relu3",
    ]  # fmt: skip


@pytest.mark.parametrize("spec", ["raw", "zstd"])
def test_lossless_specs_give_identical_logits_at_every_cut(trained, spec):
    _, traced, x, y, logits = trained
    expected = _accuracy(logits, y)
    for cut in [None, *digits_chain_cuts(traced)]:
        plain = evaluate_split(traced, x, y, cut, None)
        r = evaluate_split(traced, x, y, cut, spec)
        assert torch.equal(plain.logits, logits), cut
        assert torch.equal(r.logits, logits), (cut, spec)
        assert r.correct == plain.correct == int((logits.argmax(dim=1) == y).sum())
        assert r.accuracy == plain.accuracy == pytest.approx(expected) and r.samples == len(y)
        assert r.raw_bytes_per_sample == 4 * r.values_per_sample
        assert r.rel_mse == plain.rel_mse == 0.0
        if spec == "raw":  # raw fp32 payload plus the frame header, never less
            assert r.raw_bytes_per_sample < r.wire_bytes_per_sample < r.raw_bytes_per_sample + 100
            assert r.reduction < 1.0 and r.bits_per_value > 32.0


def test_int8_zstd_loses_at_most_two_points_at_every_cut(trained):
    _, traced, x, y, logits = trained
    base = _accuracy(logits, y)
    for cut in digits_chain_cuts(traced):
        r = evaluate_split(traced, x, y, cut, "int8+zstd")
        assert r.accuracy >= base - 0.02, (cut, r.accuracy, base)
        assert not torch.equal(r.logits, logits), cut  # it really went through the lossy codec
        assert 0.0 < r.rel_mse < 1e-3, (cut, r.rel_mse)  # int8-level error, as the accuracy table records
        assert r.wire_bytes_per_sample < r.raw_bytes_per_sample / 1.5, cut


def test_lossy_codec_reduces_the_relu2_boundary_by_more_than_8x(trained):
    _, traced, x, y, _ = trained
    r = evaluate_split(traced, x, y, "relu2", "int4+zstd")
    assert r.values_per_sample == 2048 and r.raw_bytes_per_sample == 8192
    assert r.reduction > 8.0 and r.bits_per_value < 4.0
    assert r.reduction == pytest.approx(32.0 / r.bits_per_value)


@pytest.mark.parametrize("spec", ["bogus", "int9+zstd", "zstd+int8", "zstd:99", "raw:1", ""])
def test_a_wrong_spec_raises_codec_error(trained, spec):
    _, traced, x, y, _ = trained
    with pytest.raises(CodecError):
        evaluate_split(traced, x, y, "pool", spec)


def test_a_wrong_cut_raises_plan_error(trained):
    _, traced, x, y, _ = trained
    with pytest.raises(PlanError):
        evaluate_split(traced, x, y, "fc2", "raw")  # the last node: empty tail
    with pytest.raises(PlanError):
        evaluate_split(traced, x, y, "no_such_node", "raw")


def test_evaluate_split_takes_the_module_too(trained):
    model, _, x, y, logits = trained
    r = evaluate_split(model, x[:20], y[:20], "pool", "zstd")
    assert torch.equal(r.logits, logits[:20])


def test_bench_script_writes_json(tmp_path, capsys, load_script):
    bench = load_script("bench_accuracy")
    out = tmp_path / "acc.json"
    assert bench.main(["--epochs", "2", "--specs", "raw,int4+zstd", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["seeds"][0]["rows"]
    assert len(rows) == 2 * 9  # <input> and eight chain cuts, two specs each
    assert all(r["identical_logits"] for r in rows if r["spec"] == "raw")
    best = data["seeds"][0]["headline"]
    assert best["loss_pts"] <= 1.0 and best["cut"] != "<input>"
    text = capsys.readouterr().out
    assert "| cut | values | spec |" in text and "Headline, seed 0" in text
    assert all(r["rel_mse"] >= 0.0 for r in rows)
    # the output is an accuracy table the solver reads, naming the model by its fingerprint
    from splitdnn.digits import DigitsCNN, trace_digits_model
    from splitdnn.solver import accuracy_table_from_dict

    table = accuracy_table_from_dict(data, source=str(out))
    assert table.fingerprint == trace_digits_model(DigitsCNN()).fingerprint
    assert (table.model, data["input_node"]) == ("digits_cnn", "x")
    assert table.loss("x", "int4+zstd") is not None and table.loss("relu2", "raw") == 0.0
    assert codec.decode(codec.encode(torch.zeros(2, 2).numpy(), "raw")).shape == (2, 2)
