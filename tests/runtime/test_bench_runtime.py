"""scripts/bench_runtime.py runs end to end on a tiny configuration and writes valid JSON (no timing)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from splitdnn.runtime import memory, serde


@pytest.fixture(scope="module")
def bench(load_script: Any) -> Any:
    return load_script("bench_runtime")


def _finite(value: Any) -> bool:
    """Every number in a JSON tree is finite."""
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def test_tiny_run_writes_json_and_markdown(
    bench: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, md = tmp_path / "runtime.json", tmp_path / "runtime.md"
    argv = [
        "--sizes", "4096", "--repeats", "3", "--warmup", "1", "--no-client", "--wire",
        "--clients", "2", "--max-batch-size", "4", "--rounds", "1", "--duration-s", "0.4",
        "--warmup-s", "0.1", "--tail-input", "32",
        "--json", str(out), "--md", str(md),
    ]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert bench.main(argv) == 0
    finally:  # the script gives its client process 1 thread; later tests compare with a 2-thread server
        torch.set_num_threads(threads)
    capsys.readouterr()
    data = json.loads(out.read_text())  # strict JSON: the script writes with allow_nan=False
    assert _finite(data)
    assert data["machine"]["cpu_count"] >= 1 and data["server"]["torch_threads"] >= 1
    # the main pass keeps freed buffers mapped in both processes, after a pass with glibc's defaults
    assert data["server"]["keep_freed_memory"] is True and data["settings"]["malloc_defaults_pass_first"]
    assert data["settings"]["client_keep_freed_memory"] is True or memory._glibc() is None
    assert data["settings"]["clients"] == 2 and data["settings"]["max_batch_size"] == 4
    # the overhead passes' server on one torch thread, the batching pass's on torch's default
    assert data["settings"]["server_threads"] == 1 and data["server"]["torch_threads"] == 1
    assert data["server"]["batching_torch_threads"] == torch.get_num_threads()
    assert data["overhead_default_threads"] is None  # only at 1 MiB

    for rows in (data["overhead"], data["overhead_malloc_defaults"]):
        (row,) = rows
        assert row["bytes"] == 4096 and row["shape"] == [1, 256, 4] and row["repeats"] == 3
        want = {"echo", "floor", "v2_bare", "v2_raw", "v2_wire", "v2_bound", "v2_zstd", "echo_stream",
                "v2_bound_stream", "v2_wire_stream"}  # fmt: skip
        assert set(row["variants"]) == want
        for label, v in row["variants"].items():
            assert v["wall_ms"]["p10"] <= v["wall_ms"]["median"] <= v["wall_ms"]["p90"]
            assert v["minor_faults_per_call_mean"]["client"] >= 0  # counted in both processes (Linux)
            assert v["minor_faults_per_call_mean"]["server"] >= 0
            if label != "echo":
                assert v["ratio_of_medians"] > 0
            if label not in ("echo", "floor", "echo_stream"):  # no stub call apart from the whole call
                assert v["rpc_ms"]["median"] > 0
        for label in ("v2_raw", "v2_wire", "v2_zstd", "v2_wire_stream"):  # the tail server reports its times
            assert set(row["variants"][label]["server_ms_median"]) == {"queue", "compute", "decode"}
        for label in ("v2_bound", "v2_bound_stream"):  # the bound measures none
            assert "server_ms_median" not in row["variants"][label]

    batching = data["batching"]
    assert batching["batched"]["requests"] > 0 and batching["unbatched"]["requests"] > 0
    assert set(batching["unbatched"]["batch_size_counts"]) == {"1"}  # max_batch_size 1: never batched
    assert all(1 <= int(b) <= 4 for b in batching["batched"]["batch_size_counts"])
    assert batching["throughput_ratio"]["pooled"] > 0
    assert "overhead_1MiB_v2_raw" not in data["goals"] and "met" in data["goals"]["batching"]

    text = md.read_text()
    assert "cores**" in text and "One machine" in text
    assert "raw gRPC echo" in text and "max_batch_size 4" in text
    assert "floor: copy in, `x * 1`, copy out" in text
    assert "bound: the wire client, a handler with no checks" in text
    assert "bound, each call a message on one open stream" in text
    assert "splitdnn wire client on one ModelStreamInfer stream" in text
    assert "glibc's malloc defaults in both processes" in text and "page faults client / server" in text
    assert "Server torch threads: 1 in the overhead passes (`--server-threads 1`)" in text


def test_a_1mib_run_adds_a_pass_with_torchs_default_threads(
    bench: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, md = tmp_path / "runtime.json", tmp_path / "runtime.md"
    argv = [
        "--sizes", "1048576", "--repeats", "2", "--warmup", "0", "--no-client", "--wire", "--skip-batching",
        "--skip-malloc-defaults", "--json", str(out), "--md", str(md),
    ]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    data = json.loads(out.read_text())
    (row,) = data["overhead_default_threads"]
    assert row["bytes"] == 1 << 20 and {"echo", "v2_wire", "v2_bound"} <= set(row["variants"])
    assert data["settings"]["default_threads_pass_torch_threads"] == threads
    goal = data["goals"]["overhead_1MiB_v2_wire_default_threads"]
    assert goal["ratio"] == row["variants"]["v2_wire"]["ratio_of_medians"]
    assert "torch's default threads in the server process" in md.read_text()


def test_shapes_and_validation(bench: Any) -> None:
    assert bench.shape_of(1 << 20) == (1, 256, 1024)
    with pytest.raises(SystemExit):
        bench.shape_of(1000)
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "4096,8192", "--repeats", "1,2,3"])
    with pytest.raises(SystemExit, match="--server-threads"):
        bench.main(["--server-threads", "-1"])


def test_the_bound_answers_the_wire_clients_request_with_the_tails_output(bench: Any) -> None:
    x = (np.arange(1024, dtype=np.float32).reshape(1, 256, 4) - 512) / 7
    request = serde.encode_infer_request("identity_4096", {"x": x}, fingerprint="ab" * 32)
    answer = serde.decode_infer_response(bench._bound(4096)(request, None), max_decoded_bytes=1 << 20)
    assert answer.model_name == "identity_4096" and list(answer.outputs) == ["output"]
    assert np.array_equal(answer.outputs["output"], x * 1)


def test_the_floor_answers_the_tails_output(bench: Any) -> None:
    x = np.arange(-8, 8, dtype=np.float32).reshape(1, 4, 4) / 3
    out = bench._floor(x.tobytes(), None)
    assert isinstance(out, bytes) and out == (x * 1).tobytes()
    with pytest.raises(ValueError):  # not whole fp32 elements: the call fails instead of answering
        bench._floor(b"\x00" * 6, None)


def test_a_stream_call_answers_each_message_in_order_and_closes(bench: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    server = grpc.server(ThreadPoolExecutor(2))
    doubled = bench._each(lambda request, context: request * 2)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("t", {"S": grpc.stream_stream_rpc_method_handler(doubled)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        call = bench.StreamCall(channel, "/t/S", timeout_s=30)
        assert [call(m) for m in (b"a", b"bc", b"")] == [b"aa", b"bcbc", b""]
        call.close()
        with pytest.raises(grpc.RpcError, match="CANCELLED"):  # closed: the stream is cancelled
            call(b"x")
    finally:
        channel.close()
        server.stop(0)


def test_the_echo_and_the_bound_answer_on_the_tail_servers_port(bench: Any) -> None:
    """The baseline takes the connection and the server that splitdnn's calls take; only the bare v2
    servicer has a server of its own."""
    import grpc

    from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb
    from splitdnn.runtime._proto import grpc_service_pb2_grpc as v2_grpc

    cfg = {"sizes": [4096], "echo_workers": 2, "batching": False, "max_batch_size": 1,
           "max_queue_delay_ms": 0.0, "keep_freed_memory": False, "threads": 1}  # fmt: skip
    server = bench.ServerProcess(cfg, timeout_s=120)
    channel = grpc.insecure_channel(server.info["overhead"])
    bare = grpc.insecure_channel(server.info["bare"])
    try:
        assert "echo" not in server.info
        payload = bytes(range(256)) * 16
        assert channel.unary_unary(bench.ECHO_METHOD)(payload, timeout=30) == payload
        x = np.arange(1024, dtype=np.float32).reshape(1, 256, 4)
        request = serde.encode_infer_request("identity_4096", {"x": x}, fingerprint="ab" * 32)
        answer = channel.unary_unary(f"/{bench.ECHO_SERVICE}/Bound_4096")(request, timeout=30)
        out = serde.decode_infer_response(answer, max_decoded_bytes=1 << 20).outputs["output"]
        assert np.array_equal(out, x)
        # the bare v2 servicer on its own port answers the input as the output
        reply = v2_grpc.GRPCInferenceServiceStub(bare).ModelInfer(
            serde.build_infer_request("identity_4096", {"x": x}), timeout=30
        )
        out = serde.parse_infer_response(reply, max_decoded_bytes=1 << 20).outputs["output"]
        assert np.array_equal(out, x)
        # and the echo's port is the tail server's (its v2 health answers)
        live = v2_grpc.GRPCInferenceServiceStub(channel).ServerLive(v2_pb.ServerLiveRequest(), timeout=30)
        assert live.live
    finally:
        channel.close()
        bare.close()
        server.close()


def test_the_handler_probe_times_modelinfer_beside_the_bound_and_refuses_a_bad_size(
    load_script: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    probe = load_script("probe_handler")
    threads = torch.get_num_threads()
    try:
        assert probe.main(["--bytes", "4096", "--repeats", "10", "--warmup", "2", "--pool-mib", "1"]) == 0
    finally:  # the probe sets torch's threads for the process
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    for label in ("ModelInfer", "bound", "x * 1 alone", "join alone"):
        assert float(rows[label][14:].split()[0]) > 0, out
    assert "ModelInfer - bound:" in out
    with pytest.raises(SystemExit):
        probe.main(["--bytes", "1000"])
    assert "a positive multiple of 4096, found 1000" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        probe.main(["--thrash-mib", "-1"])
    assert "--thrash-mib must be 0..4096 (MiB copied before each call), found -1" in capsys.readouterr().err


def _probe_counting_copies(probe: Any, args: list[str], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Run a probe script's ``main`` with ``args``; the size of each ``np.copyto`` it made, in order.
    torch's threads are restored after (a probe sets them for the process)."""
    copies: list[int] = []
    copyto = probe.np.copyto

    def counted(dst: Any, src: Any) -> None:
        copies.append(src.nbytes)
        copyto(dst, src)

    monkeypatch.setattr(probe.np, "copyto", counted)
    threads = torch.get_num_threads()
    try:
        assert probe.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    return copies


def test_the_handler_probe_can_evict_the_caches_before_each_call(
    load_script: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--bytes", "4096", "--repeats", "10", "--warmup", "2", "--pool-mib", "1", "--thrash-mib", "1"]
    copies = _probe_counting_copies(load_script("probe_handler"), args, monkeypatch)
    assert copies == [1 << 20] * (4 * 12)  # before each call of the four variants, warm-up included
    assert "1 MiB copied before each call" in capsys.readouterr().out


def test_the_client_probe_times_splitclient_beside_the_wire_client_on_one_faked_answer(
    load_script: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--bytes", "4096", "--repeats", "10", "--warmup", "2", "--nap-ms", "0.5", "--thrash-mib", "1"]
    copies = _probe_counting_copies(load_script("probe_client"), args, monkeypatch)
    out = capsys.readouterr().out
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    for label in ("SplitClient", "wire client"):
        assert float(rows[label][14:].split()[0]) >= 500, out  # each waited its 0.5 ms stand-in call
    assert "SplitClient - wire client:" in out and "0.5 ms of sleep and 1 MiB copied" in out
    assert "the link estimate stepped on " in out  # a step re-plans at once: the reader must see them
    assert copies == [1 << 20] * (2 * 12)  # in each stand-in call of the two variants, warm-up included


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bytes", "1000"], "--bytes must be a positive multiple of 4096, found 1000"),
        (["--repeats", "3"], "--repeats must be >= 10 and --warmup >= 0, found 3 and 50"),
        (["--nap-ms", "-1"], "--nap-ms must be 0..1000 (the stand-in call's sleep), found -1.0"),
        (
            ["--thrash-mib", "5000"],
            "--thrash-mib must be 0..4096 (MiB copied in each stand-in call), found 5000",
        ),
    ],
)
def test_the_client_probe_refuses_bad_settings(
    load_script: Any, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    probe = load_script("probe_client")
    with pytest.raises(SystemExit):
        probe.main(argv)
    assert message in capsys.readouterr().err
