"""The command line, in-process: outputs, JSON keys other tools rely on, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from splitdnn.cli import main
from splitdnn.schema import save_profile
from splitdnn.solver.synthetic import SynthNode, make_profiles

MB = 1_000_000


def _chain() -> list[SynthNode]:
    # input 600 kB; conv shrinks to 100 kB, fc to 4 kB: a cut after conv wins at mid bandwidths
    return [
        SynthNode("x", "placeholder", nbytes=600_000),
        SynthNode("conv", "call_module", ("x",), ms=10.0, nbytes=100_000, param_bytes=2 * MB),
        SynthNode("relu", "call_function", ("conv",), ms=1.0, nbytes=100_000),
        SynthNode("fc", "call_module", ("relu",), ms=200.0, nbytes=4_000, param_bytes=50 * MB),
        SynthNode("output", "output", ("fc",), nbytes=4_000),
    ]


@pytest.fixture()
def profiles(tmp_path):
    device, server = make_profiles(_chain(), speedups=(1.0, 20.0), model="toy")
    paths = tmp_path / "dev.json", tmp_path / "srv.json"
    save_profile(device, paths[0])
    save_profile(server, paths[1])
    return [str(p) for p in paths]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_solve_json_has_the_keys_other_tools_rely_on(profiles, capsys):
    dev, srv = profiles
    code, out, err = run(
        capsys,
        "solve",
        "--device-profile",
        dev,
        "--server-profile",
        srv,
        "--uplink-mbps",
        "5.85",
        "--rtt-ms",
        "20",
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["boundary"] == ["relu"] or data["boundary"] == ["conv"]
    for key in ("predicted_ms", "edge_only_ms", "cloud_only_ms"):
        assert isinstance(data[key], float)
    # 100 kB at 5.85 Mbit/s = 136.8 ms, + 20 ms RTT + 11 ms head + 10 ms tail + result
    assert data["predicted_ms"] < min(data["edge_only_ms"], data["cloud_only_ms"])
    assert data["edge_only_ms"] == pytest.approx(211.0)
    assert data["codecs"] == {data["boundary"][0]: "raw"}


def test_solve_text_shows_the_plan_and_baselines(profiles, capsys):
    dev, srv = profiles
    code, out, _ = run(
        capsys, "solve", "--device-profile", dev, "--server-profile", srv, "--uplink-mbps", "5.85"
    )
    assert code == 0
    assert "boundary tensors:" in out and "edge-only:" in out and "cloud-only:" in out


def test_objectives_and_constraints_reach_the_solver(profiles, capsys):
    dev, srv = profiles
    base = ["solve", "--device-profile", dev, "--server-profile", srv, "--uplink-mbps", "1000", "--json"]
    code, out, _ = run(capsys, *base)
    assert code == 0 and json.loads(out)["strategy"] == "cloud-only"
    code, out, _ = run(capsys, *base, "--keep-input-on-device")
    assert code == 0 and json.loads(out)["strategy"] == "split"
    code, out, _ = run(capsys, *base, "--objective", "energy")
    assert code == 0 and json.loads(out)["objective"] == "energy"


def test_infeasible_constraint_is_one_line_and_exit_1(profiles, capsys):
    dev, srv = profiles
    # the first 3 compute nodes on the device need 52 MB of parameters; allow 10
    code, out, err = run(
        capsys,
        "solve",
        "--device-profile",
        dev,
        "--server-profile",
        srv,
        "--uplink-mbps",
        "5",
        "--device-min-nodes",
        "3",
        "--max-device-memory-mb",
        "10",
    )
    assert code == 1 and out == ""
    assert err.startswith("splitdnn: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_sweep_table_json_and_plot(profiles, capsys, tmp_path):
    dev, srv = profiles
    args = [
        "sweep",
        "--device-profile",
        dev,
        "--server-profile",
        srv,
        "--uplink-mbps",
        "0.1:1000",
        "--points",
        "9",
    ]
    code, out, _ = run(capsys, *args, "--json")
    assert code == 0
    points = json.loads(out)["points"]
    assert [round(p["uplink_mbps"], 3) for p in points][0::4] == [0.1, 10.0, 1000.0]
    strategies = [p["strategy"] for p in points]
    assert strategies[0] == "edge-only" and strategies[-1] == "cloud-only" and "split" in strategies
    pytest.importorskip("matplotlib")
    png = tmp_path / "sweep.png"
    code, out, _ = run(capsys, *args, "--plot", str(png))
    assert code == 0 and "uplink Mbit/s" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p.write_text("{broken"), "not valid JSON"),
        (
            lambda p: p.write_text(p.read_text().replace('"schema_version": 1', '"schema_version": 7')),
            "schema_version 7",
        ),
        (lambda p: p.unlink(), "does not exist"),
    ],
)
def test_bad_profiles_are_one_line_errors(profiles, capsys, tmp_path, mutate, message):
    dev, srv = profiles
    from pathlib import Path

    mutate(Path(dev))
    code, out, err = run(
        capsys, "solve", "--device-profile", dev, "--server-profile", srv, "--uplink-mbps", "5"
    )
    assert code == 1 and message in err and err.count("\n") == 1


def test_profiles_of_different_models_are_refused(profiles, capsys, tmp_path):
    dev, _ = profiles
    other = make_profiles(_chain()[:3] + [SynthNode("output", "output", ("relu",))], model="other")[1]
    save_profile(other, tmp_path / "other.json")
    code, _, err = run(
        capsys,
        "solve",
        "--device-profile",
        dev,
        "--server-profile",
        str(tmp_path / "other.json"),
        "--uplink-mbps",
        "5",
    )
    assert code == 1 and "different models" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["solve", "--device-profile", "a", "--server-profile", "b", "--uplink-mbps", "-3"], "positive"),
        (["sweep", "--device-profile", "a", "--server-profile", "b", "--uplink-mbps", "100:1"], "ends below"),
        (["profile", "resnet18", "--input-shape", "1,3,x", "--out", "p.json"], "expected a shape"),
        # absurd magnitudes that once overflowed deep inside (OverflowError, a segfault in torch)
        (
            [
                "solve",
                "--device-profile",
                "a",
                "--server-profile",
                "b",
                "--uplink-mbps",
                "5",
                "--max-device-memory-mb",
                "1e308",
            ],
            "up to 1e+09",
        ),  # fmt: skip
        (["profile", "resnet18", "--threads", "100000", "--out", "p.json"], "integer in 1..1024"),
        (["profile", "resnet18", "--batch-size", "-1", "--out", "p.json"], "integer in 1..1048576"),
        (["serve", "resnet18", "--max-message-mib", "1e20"], "up to 1e+09"),
        (["demo", "--device-threads", "100000"], "integer in 1..1024"),
        ("sweep --device-profile a --server-profile b --uplink-mbps 1:10 --points 1e9".split(), "an integer"),
        ("sweep --device-profile a --server-profile b --uplink-mbps 1:10 --points 99999".split(), "1..10000"),
        # bandwidths so small that times overflowed: --json printed Infinity, which is not JSON
        ("solve --device-profile a --server-profile b --uplink-mbps 1e-310".split(), "at least 1e-06 Mbit/s"),
        ("sweep --device-profile a --server-profile b --uplink-mbps 1e-9:1".split(), "at least 1e-06 Mbit/s"),
        (
            "solve --device-profile a --server-profile b --uplink-mbps 5 --downlink-mbps 1e-9".split(),
            "at least",
        ),
    ],
)
def test_bad_arguments_exit_2_with_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err


def test_output_paths_are_checked_before_the_work(profiles, capsys, tmp_path):
    code, _, err = run(capsys, "profile", "alexnet", "--out", str(tmp_path))  # a folder: before profiling
    assert code == 1 and "--out must be a file path" in err and err.count("\n") == 1
    code, _, err = run(capsys, "profile", "alexnet", "--out", str(tmp_path / "no" / "p.json"))
    assert code == 1 and "does not exist" in err
    dev, srv = profiles
    args = ["sweep", "--device-profile", dev, "--server-profile", srv, "--uplink-mbps", "1:10"]
    code, _, err = run(capsys, *args, "--plot", str(tmp_path / "p.txt"))  # matplotlib would refuse after
    assert code == 1 and "must end in .png or .pdf or .svg" in err
    code, _, err = run(capsys, *args, "--plot", str(tmp_path / "noext"))  # it would write noext.png
    assert code == 1 and "must end in" in err


def test_run_checks_its_input_file_before_connecting(capsys, tmp_path):
    np = pytest.importorskip("numpy")
    argv = ["run", "alexnet", "--server", "127.0.0.1:1", "--input-shape", "1,3,64,64", "--input"]
    cases = [
        (np.zeros((1, 3, 64, 64), np.float64), "holds float64 values; the model takes float32"),
        (
            np.zeros((1, 3, 32, 32), np.float32),
            "has shape [1, 3, 32, 32]; the model was traced for [1, 3, 64, 64]",
        ),
        (np.zeros((3, 64, 64), np.float32), "has shape [3, 64, 64]"),
        (np.zeros((0, 3, 64, 64), np.float32), "has shape [0, 3, 64, 64]"),
    ]
    for i, (array, message) in enumerate(cases):
        path = tmp_path / f"x{i}.npy"
        np.save(path, array)
        code, _, err = run(capsys, *argv, str(path))
        assert code == 1 and message in err and err.count("\n") == 1, err
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    code, _, err = run(capsys, *argv, str(tmp_path / "x.npz"))
    assert code == 1 and "is an .npz archive" in err
    big_endian = tmp_path / "be.npy"
    np.save(big_endian, np.zeros((1, 3, 64, 64), ">f4"))
    code, _, err = run(capsys, *argv, str(big_endian), "--server", "127.0.0.1:99999")
    assert code == 1 and "port 1..65535" in err  # the float32 input passed; the address did not
    for address in ("http://127.0.0.1:8001", "127.0.0.1", "127.0.0.1:abc"):
        code, _, err = run(capsys, "run", "alexnet", "--server", address, "--input-shape", "1,3,64,64")
        assert code == 1 and "address must be host:port" in err


def test_an_error_splitdnn_does_not_check_is_still_one_line(profiles, capsys, monkeypatch):
    import splitdnn.cli as cli

    def boom(args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory:\nyou tried 1 PB")

    monkeypatch.setattr(cli, "cmd_models", boom)
    code, _, err = run(capsys, "models")
    assert code == 1 and err.count("\n") == 1
    assert "unexpected RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried 1 PB" in err
    assert "--log-level debug" in err
    with pytest.raises(RuntimeError, match="DefaultCPUAllocator"):  # the traceback, for a bug report
        main(["--log-level", "debug", "models"])


def test_profile_errors_are_one_line(capsys, tmp_path):
    pytest.importorskip("torch")
    code, _, err = run(capsys, "profile", "no_such_model", "--out", str(tmp_path / "p.json"))
    assert code == 1 and "unknown model 'no_such_model'" in err and err.count("\n") == 1
    code, _, err = run(
        capsys, "profile", "alexnet", "--input-shape", "1,3,8,8", "--out", str(tmp_path / "p.json")
    )
    assert code == 1 and "1, 3, 8, 8" in err and "Traceback" not in err
    code, _, err = run(capsys, "profile", "alexnet", "--slowdown", "0.5", "--out", str(tmp_path / "p.json"))
    assert code == 1 and "slowdown" in err


def test_profile_then_solve_end_to_end(capsys, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "p.json"
    code, text, err = run(
        capsys,
        "profile",
        "resnet18",
        "--input-shape",
        "1,3,32,32",
        "--threads",
        "1",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--slowdown",
        "3",
        "--quiet",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "slowdown x3" in text
    code, text, err = run(
        capsys,
        "solve",
        "--device-profile",
        str(out),
        "--server-profile",
        str(out),
        "--uplink-mbps",
        "18.88",
        "--json",
    )
    assert code == 0, err
    assert json.loads(text)["slowdown"] == 3.0


def test_python_dash_m_and_models_listing():
    proc = subprocess.run([sys.executable, "-m", "splitdnn", "models"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in ("alexnet", "vgg16", "resnet18", "resnet50", "mobilenet_v2", "tiny_yolov2", "vit_tiny"):
        assert name in proc.stdout


def test_three_tier_solve_through_an_edge_server(tmp_path, capsys):
    device, edge, cloud = make_profiles(_chain(), speedups=(1.0, 5.0, 50.0), model="toy")
    paths = []
    for name, prof in (("d", device), ("e", edge), ("c", cloud)):
        save_profile(prof, tmp_path / f"{name}.json")
        paths.append(str(tmp_path / f"{name}.json"))
    code, out, err = run(
        capsys,
        "solve",
        "--device-profile",
        paths[0],
        "--edge-profile",
        paths[1],
        "--server-profile",
        paths[2],
        "--uplink-mbps",
        "100",
        "--backhaul-mbps",
        "1000",
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["plan"]["num_tiers"] == 3
    assert max(data["plan"]["tiers"].values()) == 2  # the fc layer belongs on the fast cloud
    # without an edge profile the backhaul options describe nothing: refused, not ignored
    for option in ("--backhaul-mbps", "--backhaul-rtt-ms"):
        two = ["--device-profile", paths[0], "--server-profile", paths[2]]
        code, _, err = run(capsys, "solve", *two, "--uplink-mbps", "100", option, "10")
        assert code == 1 and "give --edge-profile too" in err
    code, _, err = run(
        capsys, "solve", "--device-profile", paths[0], "--server-profile", paths[2], "--uplink-mbps", "100",
        "--codecs", "none,int8+zstd",
    )  # fmt: skip
    assert code == 1 and "'none' means raw tensors only; give it alone" in err


def test_untraceable_model_and_missing_cuda_are_one_line_errors(capsys, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    (tmp_path / "branchy.py").write_text(
        "import torch\n"
        "class Branchy(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        if x.sum() > 0:\n"
        "            return x * 2\n"
        "        return x - 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = str(tmp_path / "p.json")
    code, _, err = run(capsys, "profile", "branchy:Branchy", "--input-shape", "2,3", "--out", out)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "trace" in err.lower() and "x.sum() > 0" in err
    if not torch.cuda.is_available():
        code, _, err = run(
            capsys, "profile", "alexnet", "--input-shape", "1,3,64,64", "--device", "cuda", "--out", out
        )
        assert code == 1 and "cuda" in err.lower() and err.count("\n") == 1
    code, _, err = run(
        capsys, "profile", "alexnet", "--input-shape", "1,3,64,64", "--device", "tpu", "--out", out
    )
    assert code == 1 and "'cpu', 'cuda' or 'cuda:N', found 'tpu'" in err and err.count("\n") == 1


# --------------------------------------------------------------------------------------------------
# codecs chosen together with the cut


def _with_codecs(profile, decode_ms: float):
    import dataclasses

    from splitdnn.schema import CodecResult

    measured = (
        CodecResult("raw", 100_040, 0.05, 0.05, 0.0, 0.0, 1.0),
        CodecResult("zstd", 60_000, 2.0, 1.0, 0.0, 0.0, 1.0),
        CodecResult("int8+zstd", 20_000, 1.0, decode_ms, 0.01, 1.2e-4, 0.99995),
        CodecResult("int4+zstd", 9_000, 1.0, decode_ms, 0.2, 5e-3, 0.997),
    )
    nodes = tuple(
        dataclasses.replace(n, codecs=measured) if n.name in ("conv", "relu") else n for n in profile.nodes
    )
    return dataclasses.replace(profile, nodes=nodes)


@pytest.fixture()
def codec_profiles(tmp_path):
    device, server = make_profiles(_chain(), speedups=(1.0, 20.0), model="toy")
    paths = tmp_path / "dev.json", tmp_path / "srv.json"
    save_profile(_with_codecs(device, 0.5), paths[0])
    save_profile(_with_codecs(server, 0.5), paths[1])
    return [str(p) for p in paths]


def _solve_json(capsys, dev, srv, *extra):
    code, out, err = run(
        capsys, "solve", "--device-profile", dev, "--server-profile", srv, "--uplink-mbps", "5.85",
        "--rtt-ms", "20", "--json", *extra,
    )  # fmt: skip
    assert code == 0, err
    return json.loads(out)


def test_solve_json_reports_the_codec_chosen_with_the_cut(codec_profiles, capsys):
    dev, srv = codec_profiles
    default = _solve_json(capsys, dev, srv)  # default: every measured codec, budget 0 = lossless only
    assert list(default["codecs"].values()) == ["zstd"] and default["max_error"] == 0.0
    data = _solve_json(capsys, dev, srv, "--max-error", "1")  # any measured codec
    (node,) = data["boundary"]
    assert data["codecs"] == {node: "int4+zstd"} and data["boundary_bytes"] == 9_000
    assert data["plan"]["boundary"][0]["codec"] == "int4+zstd"
    raw = _solve_json(capsys, dev, srv, "--codecs", "raw")  # the plans without codecs
    assert raw["codecs"] == {raw["boundary"][0]: "raw"} and raw["boundary_bytes"] == 100_000
    assert data["predicted_ms"] < raw["predicted_ms"]
    lossless = _solve_json(capsys, dev, srv, "--codecs", "raw,zstd")
    assert list(lossless["codecs"].values()) == ["zstd"]


def test_max_error_keeps_lossy_codecs_within_the_budget(codec_profiles, capsys):
    dev, srv = codec_profiles
    data = _solve_json(capsys, dev, srv, "--max-error", "1e-3")
    assert list(data["codecs"].values()) == ["int8+zstd"] and data["max_error"] == 1e-3
    assert "within budget 0.001" in next(iter(data["codec_notes"].values()))
    assert list(_solve_json(capsys, dev, srv, "--max-error", "0")["codecs"].values()) == ["zstd"]
    metric = _solve_json(capsys, dev, srv, "--max-error", "0.05", "--error-metric", "max_abs")
    assert list(metric["codecs"].values()) == ["int8+zstd"]
    code, out, _ = run(
        capsys, "solve", "--device-profile", dev, "--server-profile", srv, "--uplink-mbps", "5.85",
        "--max-error", "1e-3",
    )  # fmt: skip
    assert code == 0
    assert "codec int8+zstd: 19.5 KiB, rel MSE 0.00012 within budget 0.001" in out
    code, _, err = run(
        capsys, "solve", "--device-profile", dev, "--server-profile", srv, "--uplink-mbps", "5.85",
        "--codecs", "bf16",
    )  # fmt: skip
    assert code == 1 and "not measured" in err
    # a lossy codec named with no budget that admits it would never be used: said, not ignored
    for budget in ((), ("--max-error", "1e-5")):
        code, _, err = run(
            capsys, "solve", "--device-profile", dev, "--server-profile", srv, "--uplink-mbps", "5.85",
            "--codecs", "zstd,int8+zstd", *budget,
        )  # fmt: skip
        assert code == 1 and "int8+zstd's smallest measured relative MSE is 0.00012, over the error" in err
        assert ("lossless codecs only" in err) == (not budget) and "raise --max-error" in err
    with_budget = _solve_json(capsys, dev, srv, "--codecs", "zstd,int8+zstd", "--max-error", "1e-3")
    assert list(with_budget["codecs"].values()) == ["int8+zstd"]
    code, out, err = run(
        capsys, "sweep", "--device-profile", dev, "--server-profile", srv, "--uplink-mbps", "1:10",
        "--points", "2", "--max-error", "1e-3", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert all(set(p["codecs"].values()) <= {"int8+zstd", "raw"} for p in json.loads(out)["points"])


def _accuracy_table(path, profile_path, rows, **over):
    from splitdnn.schema import load_profile

    p = load_profile(profile_path)
    data = {
        "format": "splitdnn.accuracy-table/1",
        "model_name": p.model,
        "fingerprint": p.fingerprint,
        "input_node": "x",
        "seeds": [{"seed": 0, "rows": [{"cut": c, "spec": s, "loss_pts": loss} for c, s, loss in rows]}],
    }
    data.update(over)
    path.write_text(json.dumps(data))
    return str(path)


def test_accuracy_budget_chooses_codecs_by_measured_top1_loss(codec_profiles, tmp_path, capsys):
    dev, srv = codec_profiles
    rows = [(n, "int8+zstd", 0.22) for n in ("conv", "relu")] + [
        (n, "int4+zstd", 1.33) for n in ("conv", "relu")
    ]
    table = _accuracy_table(tmp_path / "acc.json", dev, rows)
    data = _solve_json(capsys, dev, srv, "--accuracy-table", table, "--max-accuracy-loss", "1")
    (node,) = data["boundary"]
    assert data["codecs"] == {node: "int8+zstd"} and data["max_error"] is None  # no rel-MSE budget
    budget = data["accuracy_budget"]
    assert budget["max_accuracy_loss_pts"] == 1.0 and budget["loss_pts"] == {node: 0.22}
    assert budget["table"] == table and budget["fingerprint"] == budget["fingerprint"]
    assert (
        "chosen under the accuracy budget 1 pts (measured top-1 loss here: +0.22 pts)"
        in data["codec_notes"][node]
    )
    loose = _solve_json(capsys, dev, srv, "--accuracy-table", table, "--max-accuracy-loss", "2")
    assert list(loose["codecs"].values()) == ["int4+zstd"]
    tight = _solve_json(capsys, dev, srv, "--accuracy-table", table, "--max-accuracy-loss", "0")
    assert list(tight["codecs"].values()) == ["zstd"] and list(
        tight["accuracy_budget"]["loss_pts"].values()
    ) == [0.0]
    both = _solve_json(
        capsys, dev, srv, "--accuracy-table", table, "--max-accuracy-loss", "2", "--max-error", "1e-3"
    )
    assert list(both["codecs"].values()) == ["int8+zstd"]
    code, out, err = run(
        capsys, "solve", "--device-profile", dev, "--server-profile", srv, "--uplink-mbps", "5.85",
        "--accuracy-table", table, "--max-accuracy-loss", "1",
    )  # fmt: skip
    assert code == 0, err
    assert "chosen under the accuracy budget 1 pts" in out
    code, out, err = run(
        capsys, "sweep", "--device-profile", dev, "--server-profile", srv, "--uplink-mbps", "1:10",
        "--points", "2", "--accuracy-table", table, "--max-accuracy-loss", "1", "--json",
    )  # fmt: skip
    assert code == 0, err
    # a codec never measured: no word of --max-error, which an accuracy budget replaces
    code1, _, err1 = run(
        capsys, "solve", "--device-profile", dev, "--server-profile", srv, "--uplink-mbps", "5.85",
        "--accuracy-table", table, "--max-accuracy-loss", "1000", "--codecs", "int2+zstd",
    )  # fmt: skip
    assert code1 == 1 and "int2+zstd" in err1 and "--max-error is 0" not in err1
    sweep = json.loads(out)
    assert all(set(p["codecs"].values()) <= {"int8+zstd", "zstd", "raw"} for p in sweep["points"])
    assert len(sweep["accuracy_budget"]) == 2


def test_accuracy_tables_that_do_not_fit_are_refused(codec_profiles, tmp_path, capsys):
    dev, srv = codec_profiles
    base = ["solve", "--device-profile", dev, "--server-profile", srv, "--uplink-mbps", "5.85"]
    other = _accuracy_table(
        tmp_path / "other.json",
        dev,
        [("conv", "int8+zstd", 0.0)],
        model_name="digits_cnn",
        fingerprint="e" * 64,
    )
    code, _, err = run(capsys, *base, "--accuracy-table", other, "--max-accuracy-loss", "1")
    assert code == 1 and err.count("\n") == 1
    assert f"accuracy table {other} was measured on model 'digits_cnn' (fingerprint eeeeeeeeeeee)" in err
    assert "but the profiles are for 'toy'" in err
    old = _accuracy_table(tmp_path / "old.json", dev, [("conv", "int8+zstd", 0.0)], format=None)
    code, _, err = run(capsys, *base, "--accuracy-table", old, "--max-accuracy-loss", "1")
    assert code == 1 and 'expected "format"' in err and "scripts/bench_accuracy.py --json" in err
    good = _accuracy_table(tmp_path / "good.json", dev, [("conv", "int8+zstd", 0.0)])
    code, _, err = run(capsys, *base, "--accuracy-table", good)
    assert code == 1 and "--accuracy-table and --max-accuracy-loss go together" in err
    code, _, err = run(capsys, *base, "--max-accuracy-loss", "1")
    assert code == 1 and "go together" in err
    code, _, err = run(
        capsys, *base, "--accuracy-table", str(tmp_path / "none.json"), "--max-accuracy-loss", "1"
    )
    assert code == 1 and "cannot read accuracy table" in err


def test_json_output_is_strict_json() -> None:
    from splitdnn.cli import _json_text

    text = _json_text({"a": float("inf"), "b": [1.5, float("nan")], "c": {"d": -float("inf")}, "e": 2})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "a": None, "b": [1.5, None], "c": {"d": None}, "e": 2,
    }  # fmt: skip


def test_a_profile_listing_an_unknown_codec_is_refused(codec_profiles, tmp_path, capsys):
    """A plan chose it ("nosuchcodec") and the first request would fail to encode."""
    dev, srv = codec_profiles
    data = json.loads(open(dev).read())
    node = next(n for n in data["nodes"] if n["codecs"])
    node["codecs"][0]["spec"] = "nosuchcodec"
    bad = tmp_path / "dev.json"
    bad.write_text(json.dumps(data))
    code, _, err = run(
        capsys, "solve", "--device-profile", str(bad), "--server-profile", srv, "--uplink-mbps", "5"
    )
    assert (
        code == 1 and "lists codec 'nosuchcodec'" in err and "unknown codec" in err and err.count("\n") == 1
    )


def test_profile_idle_factor_reaches_the_profiler_and_needs_a_slowdown(capsys, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import splitdnn.profiler as profiler
    from splitdnn.errors import ConfigError

    out = str(tmp_path / "p.json")
    code, _, err = run(capsys, "profile", "alexnet", "--idle-factor", "--out", out)
    assert code == 1 and "without an emulation nothing is padded" in err and err.count("\n") == 1
    asked = []

    def fake(traced, **kw):
        asked.append(kw["emulated_idle"])
        raise ConfigError("stop here")

    monkeypatch.setattr(profiler, "profile_model", fake)
    argv = ["profile", "alexnet", "--input-shape", "1,3,64,64", "--slowdown", "4", "--out", out]
    for extra in ((), ("--idle-factor",)):
        code, _, err = run(capsys, *argv, *extra)
        assert code == 1 and "stop here" in err
    assert asked == [False, True]  # off unless asked for
