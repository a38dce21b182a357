#!/usr/bin/env python3
"""Measure every codec on real activations of zoo models: throughput (MB/s of fp32 input), ratio, error.

Activations come from a forward pass of randomly initialised zoo models (no downloads) on one
N(0, 1) image, captured at named graph nodes with ``torch.fx.Interpreter``: ReLU outputs of
ResNet-18, ReLU6 outputs and a (signed) residual sum of MobileNetV2. torch is used only here, to make
the activations; the codecs see numpy arrays. Timing: one core (numpy and zstd are single-threaded
here; torch is limited to one thread), median of ``--repeats`` after one warm-up. MB = 10**6 bytes.
Goal of issue 3: int8+zstd encode >= 300 MB/s and decode >= 600 MB/s.

    python scripts/bench_codec.py [--repeats 7] [--json out.json] [--specs raw,zstd,int8+zstd]

``--zstd-threads`` instead measures zstd's multi-threaded mode (``zstd:...t2``) against one thread on
large activations (VGG-16 ``features_1``, 12.8 MB, ReLU; its 1, 2 and 4 MiB prefixes; VGG-16
``features_6``, 6.4 MB; ResNet-18 ``relu``, 3.2 MB): encode time, median of ``--repeats`` with the
single- and multi-threaded runs interleaved, so machine noise hits both alike. Indicative only on a
shared 2-core machine.

    python scripts/bench_codec.py --zstd-threads [--repeats 9] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from splitdnn import codec  # noqa: E402

SPECS = [
    "raw", "zstd:1", "zstd", "shuffle+zstd", "fp16", "fp16+zstd", "fp16+shuffle+zstd", "bf16+zstd",
    "int8", "int8+zstd", "int8c+zstd", "int4", "int4+zstd", "int2+zstd",
]  # fmt: skip
TENSORS = {
    "resnet18": ["relu", "layer1_1_relu_1", "layer2_1_relu_1", "layer3_1_relu_1"],
    "mobilenet_v2": ["features_2_conv_0_2", "features_6_conv_0_2", "add"],
}


def _capture_class():  # type: ignore[no-untyped-def]
    import torch.fx

    class Capture(torch.fx.Interpreter):
        """Runs the graph and keeps the outputs of the named nodes."""

        def __init__(self, gm, wanted, seen):  # type: ignore[no-untyped-def]
            super().__init__(gm)
            self.wanted, self.seen = set(wanted), seen

        def run_node(self, n):  # type: ignore[no-untyped-def]
            result = super().run_node(n)
            if n.name in self.wanted:
                self.seen[n.name] = result.detach().numpy().copy()  # (1, C, H, W) float32
            return result

    return Capture


def activations() -> dict[str, np.ndarray]:
    import torch
    import torch.fx

    _Capture = _capture_class()

    from splitdnn.models import build_zoo_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    out: dict[str, np.ndarray] = {}
    for model_name, wanted in TENSORS.items():
        gm = torch.fx.symbolic_trace(build_zoo_model(model_name))
        seen: dict[str, np.ndarray] = {}
        with torch.no_grad():
            _Capture(gm, wanted, seen).run(x)
        for name in wanted:
            out[f"{model_name}:{name}"] = seen[name]
    return out


def large_activations() -> dict[str, np.ndarray]:
    """Big ReLU outputs of VGG-16 and ResNet-18 (random weights, one N(0, 1) image) and slices of one."""
    import torch
    import torch.fx

    from splitdnn.models import build_zoo_model

    _Capture = _capture_class()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    out: dict[str, np.ndarray] = {}
    for model_name, wanted in (("vgg16", ["features_1", "features_6"]), ("resnet18", ["relu"])):
        gm = torch.fx.symbolic_trace(build_zoo_model(model_name))
        seen: dict[str, np.ndarray] = {}
        with torch.no_grad():
            _Capture(gm, wanted, seen).run(x)
        for name in wanted:
            out[f"{model_name}:{name}"] = seen[name]
        del gm
    flat = out["vgg16:features_1"].reshape(-1)
    for mib in (1, 2, 4):
        out[f"vgg16:features_1[:{mib} MiB]"] = flat[: mib * 2**18].copy()
    return dict(sorted(out.items(), key=lambda kv: kv[1].nbytes))


def zstd_threads(repeats: int, json_path: Path | None) -> int:
    """Encode time of zstd chains on one thread and on two, interleaved; the decoder is the same."""
    pairs = [("zstd", "zstd:t2"), ("fp16+zstd", "fp16+zstd:t2"), ("int8+zstd", "int8+zstd:t2")]
    rows = []
    for tname, array in large_activations().items():
        mb = array.nbytes / 1e6
        for one, two in pairs:
            times: dict[str, list[float]] = {one: [], two: []}
            sizes = {s: len(codec.encode(array, s)) for s in (one, two)}  # warm-up
            for _ in range(repeats):
                for spec in (one, two):
                    t0 = time.perf_counter()
                    codec.encode(array, spec)
                    times[spec].append(time.perf_counter() - t0)
            t1, t2 = statistics.median(times[one]), statistics.median(times[two])
            rows.append(
                {
                    "tensor": tname,
                    "mb": mb,
                    "spec": one,
                    "encode_ms_1_thread": t1 * 1e3,
                    "encode_ms_2_threads": t2 * 1e3,
                    "speedup": t1 / t2,
                    "bytes_1_thread": sizes[one],
                    "bytes_2_threads": sizes[two],
                    "zstd_input_mb": mb if one == "zstd" else mb / (2 if one.startswith("fp16") else 4),
                }
            )
    print(f"zstd encode on 1 vs 2 threads, median of {repeats} interleaved runs (indicative: shared VM)\n")
    print("| tensor | fp32 MB | chain | into zstd MB | 1 thread ms | 2 threads ms | speed-up | size change |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['tensor']} | {r['mb']:.1f} | {r['spec']} | {r['zstd_input_mb']:.1f} | "
            f"{r['encode_ms_1_thread']:.1f} | {r['encode_ms_2_threads']:.1f} | {r['speedup']:.2f}x | "
            f"{100 * (r['bytes_2_threads'] / r['bytes_1_thread'] - 1):+.2f}% |"
        )
    if json_path:
        json_path.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def median_seconds(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--specs", default=",".join(SPECS))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--zstd-threads", action="store_true", help="measure zstd on 1 vs 2 threads instead")
    args = ap.parse_args(argv)
    if args.zstd_threads:
        return zstd_threads(args.repeats, args.json)
    specs = args.specs.split(",")
    acts = activations()
    rows = []
    for tname, array in acts.items():
        mb = array.nbytes / 1e6
        sparsity = float((array == 0).mean())
        for spec in specs:
            frame = codec.encode(array, spec)
            decoded = codec.decode(frame)
            err = np.abs(decoded - array)
            bound = codec.error_bound(spec, array)
            assert float(err.max()) <= bound, (tname, spec)
            enc = median_seconds(lambda a=array, s=spec: codec.encode(a, s), args.repeats)
            dec = median_seconds(lambda f=frame: codec.decode(f), args.repeats)
            rows.append(
                {
                    "tensor": tname,
                    "shape": list(array.shape),
                    "zeros": round(sparsity, 3),
                    "spec": spec,
                    "ratio": array.nbytes / len(frame),
                    "bits_per_value": 8 * len(frame) / array.size,
                    "encode_mb_s": mb / enc,
                    "decode_mb_s": mb / dec,
                    "max_abs_err": float(err.max()),
                    "rel_mse": float(
                        (err.astype(np.float64) ** 2).mean()
                        / max((array.astype(np.float64) ** 2).mean(), 1e-30)
                    ),
                    "bound": bound,
                }
            )
    print(
        "| tensor | shape | zeros | codec | ratio | bits/value | encode MB/s | decode MB/s | max abs err |",
        end="",
    )
    print(" rel MSE |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['tensor']} | {'x'.join(map(str, r['shape']))} | {r['zeros']:.2f} | {r['spec']} | "
            f"{r['ratio']:.2f} | {r['bits_per_value']:.2f} | "
            f"{r['encode_mb_s']:.0f} | {r['decode_mb_s']:.0f} | "
            f"{r['max_abs_err']:.3g} | {r['rel_mse']:.2g} |"
        )
    print("\nmedian over tensors:")
    print("| codec | ratio | encode MB/s | decode MB/s |")
    print("| --- | --- | --- | --- |")
    for spec in specs:
        sel = [r for r in rows if r["spec"] == spec]
        print(
            f"| {spec} | {statistics.median(r['ratio'] for r in sel):.2f} | "
            f"{statistics.median(r['encode_mb_s'] for r in sel):.0f} | "
            f"{statistics.median(r['decode_mb_s'] for r in sel):.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
