"""The model zoo (torchvision names, parameter counts, fx tracing) and model/weights loading."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
from torch import fx, nn  # noqa: E402

from splitdnn.errors import ConfigError, ModelLoadError  # noqa: E402
from splitdnn.models import (  # noqa: E402
    ZOO,
    build_zoo_model,
    default_input_shape,
    load_model,
    load_weights,
    parse_kwargs,
    zoo_names,
)

REQUIRED = {"alexnet", "vgg16", "resnet18", "resnet50", "mobilenet_v2", "tiny_yolov2", "vit_tiny"}

# Output shape on each entry's test input (batch 1).
OUTPUT_SHAPES = {name: (1, 1000) for name in REQUIRED} | {"tiny_yolov2": (1, 125, 2, 2)}

# Totals of torchvision's models with 1000 classes; vit_tiny is ViT-Ti/16 (DeiT-tiny) and
# tiny_yolov2 is darknet's yolov2-tiny-voc (convs 15,727,536 + bn 6,112 + head 128,125).
PARAM_COUNTS = {
    "alexnet": 61_100_840,
    "vgg16": 138_357_544,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "vit_tiny": 5_717_416,
    "tiny_yolov2": 15_861_773,
}

# Number of state_dict entries (parameters and buffers, num_batches_tracked included), as torchvision.
STATE_DICT_SIZES = {
    "alexnet": 16,
    "vgg16": 32,
    "resnet18": 122,
    "resnet50": 320,
    "mobilenet_v2": 314,
    "vit_tiny": 152,
}

# Sample keys and shapes of torchvision's state_dicts, pinning the names a torchvision checkpoint uses.
EXPECTED_KEYS: dict[str, dict[str, tuple[int, ...]]] = {
    "alexnet": {
        "features.0.weight": (64, 3, 11, 11),
        "features.0.bias": (64,),
        "features.3.weight": (192, 64, 5, 5),
        "features.6.weight": (384, 192, 3, 3),
        "features.8.weight": (256, 384, 3, 3),
        "features.10.weight": (256, 256, 3, 3),
        "classifier.1.weight": (4096, 9216),
        "classifier.4.weight": (4096, 4096),
        "classifier.6.weight": (1000, 4096),
        "classifier.6.bias": (1000,),
    },
    "vgg16": {
        "features.0.weight": (64, 3, 3, 3),
        "features.2.weight": (64, 64, 3, 3),
        "features.5.weight": (128, 64, 3, 3),
        "features.10.weight": (256, 128, 3, 3),
        "features.17.weight": (512, 256, 3, 3),
        "features.28.weight": (512, 512, 3, 3),
        "features.28.bias": (512,),
        "classifier.0.weight": (4096, 25088),
        "classifier.3.weight": (4096, 4096),
        "classifier.6.weight": (1000, 4096),
        "classifier.6.bias": (1000,),
    },
    "resnet18": {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.weight": (64,),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.1.bn2.bias": (64,),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_var": (128,),
        "layer3.1.conv2.weight": (256, 256, 3, 3),
        "layer4.0.conv1.weight": (512, 256, 3, 3),
        "layer4.1.bn2.num_batches_tracked": (),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    },
    "resnet50": {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer2.0.downsample.0.weight": (512, 256, 1, 1),
        "layer3.5.bn3.weight": (1024,),
        "layer4.0.downsample.1.running_mean": (2048,),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "fc.weight": (1000, 2048),
    },
    "mobilenet_v2": {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.0.1.weight": (32,),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.1.conv.2.running_var": (16,),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.2.conv.1.0.weight": (96, 1, 3, 3),
        "features.2.conv.2.weight": (24, 96, 1, 1),
        "features.2.conv.3.bias": (24,),
        "features.17.conv.2.weight": (320, 960, 1, 1),
        "features.18.0.weight": (1280, 320, 1, 1),
        "features.18.1.running_mean": (1280,),
        "classifier.1.weight": (1000, 1280),
    },
    "vit_tiny": {
        "class_token": (1, 1, 192),
        "conv_proj.weight": (192, 3, 16, 16),
        "conv_proj.bias": (192,),
        "encoder.pos_embedding": (1, 197, 192),
        "encoder.layers.encoder_layer_0.ln_1.weight": (192,),
        "encoder.layers.encoder_layer_0.self_attention.in_proj_weight": (576, 192),
        "encoder.layers.encoder_layer_0.self_attention.in_proj_bias": (576,),
        "encoder.layers.encoder_layer_0.self_attention.out_proj.weight": (192, 192),
        "encoder.layers.encoder_layer_11.ln_2.bias": (192,),
        "encoder.layers.encoder_layer_11.mlp.0.weight": (768, 192),
        "encoder.layers.encoder_layer_11.mlp.3.weight": (192, 768),
        "encoder.layers.encoder_layer_11.mlp.3.bias": (192,),
        "encoder.ln.weight": (192,),
        "heads.head.weight": (1000, 192),
    },
    "tiny_yolov2": {
        "features.conv1.conv.weight": (16, 3, 3, 3),
        "features.conv1.bn.running_mean": (16,),
        "features.conv6.conv.weight": (512, 256, 3, 3),
        "features.conv8.conv.weight": (1024, 1024, 3, 3),
        "head.weight": (125, 1024, 1, 1),
        "head.bias": (125,),
    },
}


def _meta_model(name: str, **kwargs: object) -> nn.Module:
    """The model with parameters on the meta device: names and shapes without allocating memory."""
    with torch.device("meta"):
        return ZOO[name].builder(**kwargs)


def _small_input(name: str) -> torch.Tensor:
    return torch.randn(1, *ZOO[name].test_input_shape, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------------------------
# the zoo


def test_registry_lists_the_required_models() -> None:
    assert REQUIRED <= set(zoo_names())
    assert zoo_names() == sorted(ZOO)
    for name, entry in ZOO.items():
        assert entry.name == name
        assert entry.kind in ("chain", "dag")
        assert entry.description and "\n" not in entry.description
        assert len(entry.input_shape) == len(entry.test_input_shape) == 3
    assert {n for n in REQUIRED if ZOO[n].kind == "chain"} == {"alexnet", "vgg16", "tiny_yolov2"}


def test_registry_is_read_only() -> None:
    entry = ZOO["resnet18"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.kind = "chain"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ZOO["mine"] = entry  # type: ignore[index]
    with pytest.raises(TypeError):
        ZOO["vit_tiny"].test_kwargs["image_size"] = 64  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_zoo_model_runs_and_traces_exactly(name: str) -> None:
    torch.manual_seed(0)
    model = build_zoo_model(name, **ZOO[name].test_kwargs)
    assert not model.training
    x = _small_input(name)
    with torch.no_grad():
        eager = model(x)
        traced = fx.symbolic_trace(model)
        replay = traced(x)
    assert tuple(eager.shape) == OUTPUT_SHAPES[name]
    assert torch.isfinite(eager).all()
    assert torch.equal(eager, replay)
    # No node reads a tensor's size, so the graph holds for any batch size.
    for node in traced.graph.nodes:
        assert not (node.op == "call_method" and node.target in ("size", "dim")), node.name
        assert not (node.op == "call_function" and node.args[1:2] == ("shape",)), node.name
    # "chain" means every node reads at most one node and feeds at most one; a "dag" breaks that.
    nodes = list(traced.graph.nodes)
    is_chain = all(len(n.all_input_nodes) <= 1 and len(n.users) <= 1 for n in nodes)
    assert is_chain == (ZOO[name].kind == "chain")


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_activations_are_out_of_place(name: str) -> None:
    # An in-place ReLU overwrites the value of the node before it, which a pass that records every
    # node's output (profiling, boundary-tensor measurements) would then see wrongly.
    inplace = [n for n, m in _meta_model(name).named_modules() if getattr(m, "inplace", False)]
    assert inplace == []


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts_match_torchvision(name: str) -> None:
    model = _meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_KEYS))
def test_state_dict_names_and_shapes_match_torchvision(name: str) -> None:
    state = _meta_model(name).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for key, shape in EXPECTED_KEYS[name].items():
        assert key in shapes, f"{name}: missing {key}"
        assert shapes[key] == shape, f"{name}: {key} has shape {shapes[key]}, torchvision has {shape}"
    if name in STATE_DICT_SIZES:
        assert len(state) == STATE_DICT_SIZES[name]


def test_vit_with_vit_b_16_config_has_torchvision_parameter_count() -> None:
    model = _meta_model("vit_tiny", num_heads=12, hidden_dim=768, mlp_dim=3072)
    assert sum(p.numel() for p in model.parameters()) == 86_567_656  # torchvision vit_b_16


def test_vit_image_size_is_an_argument() -> None:
    model = build_zoo_model("vit_tiny", image_size=48, num_layers=2, num_classes=7)
    assert tuple(model.state_dict()["encoder.pos_embedding"].shape) == (1, 10, 192)  # 3x3 patches + cls
    with torch.no_grad():
        assert tuple(model(torch.randn(2, 3, 48, 48)).shape) == (2, 7)
    with pytest.raises(ModelLoadError, match="multiple of patch_size"):
        build_zoo_model("vit_tiny", image_size=40)


def test_tiny_yolov2_full_size_output_is_13x13_grid_of_125() -> None:
    model = build_zoo_model("tiny_yolov2")
    with torch.no_grad():
        out = model(torch.randn(default_input_shape("tiny_yolov2")))
    assert tuple(out.shape) == (1, 5 * (5 + 20), 13, 13)


def test_num_classes_changes_the_head() -> None:
    for name in ("alexnet", "resnet18", "mobilenet_v2"):
        model = _meta_model(name, num_classes=10)
        assert list(model.state_dict().values())[-1].shape[0] == 10


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_zoo_model_runs_at_default_input_shape(name: str) -> None:
    model = build_zoo_model(name)
    with torch.no_grad():
        out = model(torch.randn(default_input_shape(name)))
    assert out.shape[0] == 1 and torch.isfinite(out).all()


def test_default_input_shape() -> None:
    assert default_input_shape("resnet18") == (1, 3, 224, 224)
    assert default_input_shape("tiny_yolov2", batch_size=4) == (4, 3, 416, 416)
    assert default_input_shape("vit_tiny", kwargs={"image_size": 64}) == (1, 3, 64, 64)
    with pytest.raises(ConfigError, match="batch_size"):
        default_input_shape("resnet18", batch_size=0)
    with pytest.raises(ModelLoadError, match="unknown zoo model 'nope'"):
        default_input_shape("nope")


def test_build_zoo_model_refuses_unknown_kwargs() -> None:
    with pytest.raises(ModelLoadError, match=r"rejected keyword arguments \['depth'\].*num_classes"):
        build_zoo_model("resnet18", depth=34)


# --------------------------------------------------------------------------------------------------
# load_model: specs


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A uniquely named module on sys.path with model factories, good and bad."""
    name = f"usernets_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def build(width=4, num_classes=3):
                return nn.Sequential(
                    nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                    nn.Linear(width, num_classes),
                )

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(4, 2)

                def forward(self, x):
                    return self.fc(x)

            class Factories:
                @staticmethod
                def make():
                    return Net()

            def not_a_model():
                return 42

            def broken():
                raise RuntimeError("boom")

            def exits():
                raise SystemExit(3)

            NOT_CALLABLE = 7
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_load_zoo_model_by_name() -> None:
    model, display = load_model("resnet18", kwargs={"num_classes": 10})
    assert display == "resnet18"
    assert not model.training
    with torch.no_grad():
        assert tuple(model(torch.randn(1, 3, 32, 32)).shape) == (1, 10)


def test_load_module_callable(user_module: str) -> None:
    model, display = load_model(f"{user_module}:build", kwargs={"width": 8, "num_classes": 5})
    assert display == f"{user_module}:build"
    assert not model.training
    assert model[0].out_channels == 8
    with torch.no_grad():
        assert tuple(model(torch.randn(1, 3, 8, 8)).shape) == (1, 5)
    model, _ = load_model(f"{user_module}:Net")
    assert isinstance(model.fc, nn.Linear)
    model, _ = load_model(f"{user_module}:Factories.make")
    assert isinstance(model.fc, nn.Linear)


def test_a_callable_spec_builds_the_same_weights_every_time_without_touching_the_callers_rng(
    user_module: str,
) -> None:
    """So an edge client and a tail server that build one spec without a weights file agree."""
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, _ = load_model(f"{user_module}:build", kwargs={"width": 8})
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.rand(7)  # another process, in another random state
    b, _ = load_model(f"{user_module}:build", kwargs={"width": 8})
    assert all(
        torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_load_callable_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "my_nets.py"
    path.write_text("from torch import nn\n\ndef tiny():\n    return nn.Linear(2, 3)\n")
    model, display = load_model(f"{path}:tiny")
    assert isinstance(model, nn.Linear) and display == f"{path}:tiny"


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("resnet1000", ["unknown model 'resnet1000'", "resnet18", "vit_tiny", "package.module:callable"]),
        ("no_such_module_xyz:build", ["module 'no_such_module_xyz' not found", "PYTHONPATH"]),
        ("os.path:", ["Python name after the colon"]),
        ("os path:build", ["dotted module name"]),
        ("missing_dir/nets.py:build", ["no file at"]),
        ("", ["expected a model spec"]),
    ],
)
def test_load_model_refuses_bad_specs(spec: str, fragments: list[str]) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(spec)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("attr", "kwargs", "fragments"),
    [
        ("nothing_here", None, ["has no attribute 'nothing_here'", "build"]),
        ("not_a_model", None, ["return a torch.nn.Module", "found a int"]),
        ("broken", None, ["raised RuntimeError: boom"]),
        ("exits", None, ["raised SystemExit: 3"]),  # not a silent exit of the whole process
        ("build", {"depth": 3}, ["raised TypeError", "depth"]),
        ("NOT_CALLABLE", None, ["callable", "found a int"]),
    ],
)
def test_load_model_refuses_bad_callables(
    user_module: str, attr: str, kwargs: dict | None, fragments: list[str]
) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(f"{user_module}:{attr}", kwargs=kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_module_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"badnets_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelLoadError, match="needs 'no_such_dependency_xyz'"):
        load_model(f"{name}:build")


def test_torchvision_spec_says_torchvision_is_not_importable() -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("torchvision imports here")
    with pytest.raises(ModelLoadError, match="torchvision, which is not importable"):
        load_model("torchvision:resnet18")
    with pytest.raises(ModelLoadError, match="torchvision is not importable"):
        load_model("wide_resnet50_2")


# --------------------------------------------------------------------------------------------------
# load_model: weights


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor]:
    """resnet18 (10 classes) with non-default weights and batch-norm statistics, and an input."""
    torch.manual_seed(1)
    model = build_zoo_model("resnet18", num_classes=10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(7)
    return model, torch.randn(1, 3, 32, 32)


def _assert_same(model: nn.Module, trained: tuple[nn.Module, torch.Tensor]) -> None:
    reference, x = trained
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_weights_round_trip_through_safetensors(tmp_path: Path, trained) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "r18.safetensors"
    save_file(trained[0].state_dict(), str(path))
    model, _ = load_model("resnet18", kwargs={"num_classes": 10}, weights=str(path))
    _assert_same(model, trained)


def test_weights_round_trip_through_torch_save(tmp_path: Path, trained) -> None:
    path = tmp_path / "r18.pt"
    torch.save(trained[0].state_dict(), path)
    model, _ = load_model("resnet18", kwargs={"num_classes": 10}, weights=path)
    _assert_same(model, trained)


def test_weights_in_checkpoints_and_dataparallel_form(tmp_path: Path, trained) -> None:
    state = trained[0].state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model, _ = load_model("resnet18", kwargs={"num_classes": 10}, weights=path)
    _assert_same(model, trained)
    # Older checkpoints lack num_batches_tracked; batch norm fills it in, so that is not a mismatch.
    path = tmp_path / "old.pt"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    load_model("resnet18", kwargs={"num_classes": 10}, weights=path)


def test_weights_with_wrong_keys_are_refused_and_leave_model_untouched(tmp_path: Path, trained) -> None:
    path = tmp_path / "r18.pt"
    torch.save(trained[0].state_dict(), path)
    with pytest.raises(ModelLoadError) as info:
        load_model("alexnet", weights=path)
    message = str(info.value)
    assert "does not fit model 'alexnet'" in message
    assert "missing keys (e.g. 'features.0.weight'" in message
    assert "unexpected keys (e.g. 'conv1.weight'" in message

    model = build_zoo_model("resnet18")  # 1000 classes
    before = model.conv1.weight.clone()
    with pytest.raises(
        ModelLoadError, match=r"2 shape mismatches.*fc\.weight: file \(10, 512\) vs model \(1000, 512\)"
    ):
        load_weights(model, path, model_name="resnet18")
    assert torch.equal(model.conv1.weight, before)


@pytest.mark.parametrize(
    ("filename", "content", "fragment"),
    [
        ("junk.pt", b"this is not a torch file", "cannot be read as a torch state_dict"),
        ("junk.safetensors", b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1', "not a readable safetensors"),
        ("empty.safetensors", b"", "not a readable safetensors"),
    ],
)
def test_corrupt_weights_are_refused(tmp_path: Path, filename: str, content: bytes, fragment: str) -> None:
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=fragment):
        load_model("resnet18", weights=path)


def test_pickled_objects_and_non_state_dicts_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "model.pt"
    torch.save(_Custom(), pickled)  # a pickled class: weights_only=True refuses it
    with pytest.raises(ModelLoadError, match="weights_only=True") as info:
        load_model("resnet18", weights=pickled)
    assert "\x1b" not in str(info.value)  # torch's bold text, not in a one-line message
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ModelLoadError, match="holds a list"):
        load_model("resnet18", weights=listed)


class _Custom:
    """A class torch.load(weights_only=True) must refuse to unpickle."""


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"weights file .*nope\.safetensors' not found"):
        load_model("resnet18", weights=tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------------------------------
# parse_kwargs


def test_parse_kwargs_reads_literals_and_falls_back_to_strings() -> None:
    parsed = parse_kwargs(
        ["num_classes=10", "dropout=0.25", "size=(3, 3)", "name=tiny", "quoted='x y'", "flag=true",
         "off=False", "nothing=none", "code=__import__('os').system('true')", "empty="]
    )  # fmt: skip
    assert parsed == {
        "num_classes": 10,
        "dropout": 0.25,
        "size": (3, 3),
        "name": "tiny",
        "quoted": "x y",
        "flag": True,
        "off": False,
        "nothing": None,
        "code": "__import__('os').system('true')",  # never evaluated
        "empty": "",
    }


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        (["num_classes"], "expected key=value"),
        (["1x=3"], "expected key=value"),
        (["a=1", "a=2"], "given twice"),
    ],
)
def test_parse_kwargs_refuses_malformed_pairs(items: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_kwargs(items)
