"""Profile records and their JSON form: round trips, strict validation, clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from splitdnn.errors import ConfigError, ProfileError, ProfileMismatchError
from splitdnn.schema import (
    Calibration,
    LatencyStats,
    Link,
    MachineInfo,
    NodeProfile,
    Profile,
    TensorMeta,
    check_same_model,
    load_profile,
    profile_from_json,
    profile_to_json,
    save_profile,
)


def _node(name: str, op: str, inputs: tuple[str, ...], nbytes: int = 400, ms: float = 1.0) -> NodeProfile:
    return NodeProfile(
        name=name,
        op=op,
        target=name,
        inputs=inputs,
        outputs=(TensorMeta((1, nbytes // 4), "float32", nbytes),),
        output_bytes=nbytes,
        param_bytes=0,
        latency=LatencyStats(ms, ms * 0.9, ms * 1.1, 5),
        calibrated_ms=ms,
    )


def make_profile(**changes) -> Profile:
    fields = dict(
        schema_version=1,
        model="toy",
        fingerprint="ab" * 32,
        input_shapes=((1, 100),),
        batch_size=1,
        machine=MachineInfo("host", "Linux", "cpu", 2, 1, "cpu", "", "3.11", "2.13.0"),
        slowdown=1.0,
        warmup=1,
        repeats=5,
        total=LatencyStats(3.0, 2.9, 3.1, 5),
        calibration=Calibration("segment-prefix", 2, 1, 5.0, 0.1, 0.05),
        nodes=(
            _node("x", "placeholder", (), ms=0.0),
            _node("fc1", "call_module", ("x",)),
            _node("relu", "call_function", ("fc1",)),
            _node("fc2", "call_module", ("relu",)),
            _node("output", "output", ("fc2",), ms=0.0),
        ),
        created_utc="2026-11-29T00:00:00+00:00",
    )
    fields.update(changes)
    return Profile(**fields)


def test_profile_round_trips_through_json_exactly(tmp_path):
    prof = make_profile()
    path = tmp_path / "p.json"
    save_profile(prof, path)
    assert load_profile(path) == prof
    text = path.read_text()
    assert text == profile_to_json(prof)
    assert list(json.loads(text)) == sorted(json.loads(text)), "keys are written sorted"


def test_describe_always_shows_emulation():
    assert "slowdown" not in make_profile().describe()
    assert "slowdown x4" in make_profile(slowdown=4.0).describe()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("nodes"), "missing field 'nodes'"),
        (lambda d: d.update(extra=1), "unknown field(s) ['extra']"),
        (lambda d: d["nodes"][1].update(calibrated_ms="fast"), "nodes[1].calibrated_ms: expected a number"),
        (lambda d: d["nodes"][1].update(output_bytes=1.5), "nodes[1].output_bytes: expected an integer"),
        (lambda d: d["nodes"][2].update(inputs=["ghost"]), "reads 'ghost', which is not an earlier node"),
        (lambda d: d["nodes"][1].update(op="call_magic"), "op must be one of"),
        (lambda d: d["total"].update(p10_ms=9.0), "out of order"),
        (lambda d: d.update(slowdown=0.5), "slowdown must be a finite factor >= 1"),
        (lambda d: d["nodes"].pop(), "exactly one output node"),
        (lambda d: d["nodes"].append(dict(d["nodes"][1])), "appears twice"),
        (lambda d: d["machine"].update(threads=True), "machine.threads: expected an integer"),
        # hand edits that once got through, or out as OverflowError
        (lambda d: d["nodes"][1].update(calibrated_ms=10**400), "nodes[1].calibrated_ms: expected a finite"),
        (lambda d: d.update(input_shapes=[[1, 3, -224, 224]]), "input_shapes must hold one shape"),
        (lambda d: d.update(input_shapes=[[]]), "input_shapes must hold one shape"),
        (lambda d: d.update(input_shapes=[]), "input_shapes must hold one shape"),
        # a get_attr reading a node: the solver drops such edges, and values reached the server unsent
        (lambda d: d["nodes"][2].update(op="get_attr"), "is a get_attr but reads ['fc1']"),
        (
            lambda d: d.update(schema_version="1"),
            "schema_version must be the integer 1, found the string '1'",
        ),
    ],
)
def test_corrupt_profiles_are_refused_with_the_path_of_the_bad_value(mutate, message):
    data = json.loads(profile_to_json(make_profile()))
    mutate(data)
    with pytest.raises(ProfileError) as info:
        profile_from_json(json.dumps(data))
    assert message in str(info.value)


def test_other_schema_version_is_a_mismatch_not_a_crash():
    data = json.loads(profile_to_json(make_profile()))
    data["schema_version"] = 2
    with pytest.raises(ProfileMismatchError, match="schema_version 2.*reads version 1"):
        profile_from_json(json.dumps(data))


def test_not_json_and_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="not valid JSON"):
        profile_from_json("{nope")
    with pytest.raises(ProfileError, match="expected a JSON object"):
        profile_from_json("[1, 2]")
    for deep in ("[" * 100_000, '{"a":' * 100_000):  # json.loads raises RecursionError on these
        with pytest.raises(ProfileError, match="too deeply"):
            profile_from_json(deep)
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(tmp_path / "missing.json")
    with pytest.raises(ProfileError, match="not valid JSON.*digits"):  # json's own limit: ValueError
        profile_from_json('{"schema_version": 1' + "0" * 5000 + "}")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ProfileError, match="cannot be read"):
        load_profile(binary)
    if Path("/dev/zero").exists():  # endless: refused at the size cap instead of filling memory
        with pytest.raises(ProfileError, match="larger than"):
            load_profile("/dev/zero")


def test_profile_of_another_model_is_refused(tmp_path):
    path = tmp_path / "p.json"
    save_profile(make_profile(), path)
    with pytest.raises(ProfileMismatchError, match="expected fingerprint cdcdcd"):
        load_profile(path, fingerprint="cd" * 32)
    with pytest.raises(ProfileMismatchError, match="input shapes"):
        load_profile(path, input_shapes=((1, 3),))
    with pytest.raises(ProfileMismatchError, match="different models"):
        check_same_model([make_profile(), make_profile(fingerprint="cd" * 32)])


def test_link_units_and_refusals():
    link = Link(uplink_mbps=8.0, rtt_ms=5.0)
    assert link.uplink_ms(1_000_000) == pytest.approx(1000.0)  # 8 Mbit at 8 Mbit/s
    assert link.downlink_ms(1_000_000) == pytest.approx(1000.0)
    assert Link(8.0, downlink_mbps=80.0).downlink_ms(1_000_000) == pytest.approx(100.0)
    for bad in (dict(uplink_mbps=0), dict(uplink_mbps=float("nan")), dict(uplink_mbps=1, rtt_ms=-1)):
        with pytest.raises(ConfigError):
            Link(**bad)


def test_core_modules_import_no_torch_numpy_or_grpc():
    code = (
        "import sys, splitdnn, splitdnn.schema, splitdnn.errors, splitdnn.report, splitdnn.solver;"
        "bad = [m for m in ('torch', 'numpy', 'grpc') if m in sys.modules];"
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, f"core modules pulled in {proc.stdout.strip()} {proc.stderr}"


def test_public_api_is_sorted_and_complete():
    import splitdnn

    assert splitdnn.__all__ == sorted(splitdnn.__all__)
    public = {n for n in vars(splitdnn) if not n.startswith("_") or n == "__version__"}
    modules = {n for n in public if type(getattr(splitdnn, n)).__name__ == "module"}
    assert set(splitdnn.__all__) == public - modules
