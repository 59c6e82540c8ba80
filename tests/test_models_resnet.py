"""ResNet family (He et al. 2016): torchvision parity, parameter counts, plain twins, shortcut options, input checks."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import cnnzoo
from cnnzoo.errors import CnnzooError, InputShapeError
from cnnzoo.models.resnet import BasicBlock, Bottleneck, ResNet, ZeroPadShortcut

BLOCKS = (BasicBlock, Bottleneck)
CIFAR_NETS = [
    "resnet18_cifar",
    "resnet34_cifar",
    "resnet50_cifar",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "plain20",
    "plain32",
    "plain44",
    "plain56",
    "plain110",
]
# He et al. 2016 section 4.2 nets with option A shortcuts at 10 classes (the widely reproduced counts).
CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, BLOCKS)]


def stage_outputs(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Output shapes of the named submodules for input ``x``."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    hooks = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape))) for n in names
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return shapes


# --- ImageNet nets: torchvision parity --------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_state_dict_loads_strict_and_gives_identical_outputs(depth):
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    ours = cnnzoo.create_model(f"resnet{depth}").eval()
    assert n_params(ours) == n_params(tv)
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))


def test_v1_moves_the_stride_to_the_first_1x1():
    tv = torchvision.models.resnet50(weights=None).eval()
    v15 = cnnzoo.create_model("resnet50", variant="v1.5").eval()
    v1 = cnnzoo.create_model("resnet50", variant="v1").eval()
    assert n_params(v1) == n_params(v15) == n_params(tv)
    v1.load_state_dict(tv.state_dict(), strict=True)  # same parameters, only the stride placement differs
    v15.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)  # layer2 input: 16x16, output 8x8
    names = ["layer2.0.conv1", "layer2.0.conv2", "layer2"]
    s1, s15 = stage_outputs(v1, x, names), stage_outputs(v15, x, names)
    assert s15["layer2.0.conv1"] == (1, 128, 16, 16) and s1["layer2.0.conv1"] == (1, 128, 8, 8)
    assert s15["layer2.0.conv2"] == s1["layer2.0.conv2"] == (1, 128, 8, 8)
    assert s15["layer2"] == s1["layer2"] == (1, 512, 8, 8)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    with torch.no_grad():
        assert not torch.allclose(v1(x), v15(x))
    with pytest.raises(CnnzooError, match=r"variant must be one of 'v1.5', 'v1'; got 'v2'"):
        cnnzoo.create_model("resnet50", variant="v2")


def test_imagenet_shortcuts_are_projections_only_where_the_shape_changes():
    model = cnnzoo.create_model("resnet50")
    with_downsample = [n for n, m in model.named_modules() if isinstance(m, BLOCKS) and m.downsample is not None]
    assert with_downsample == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]  # layer1.0: 64 -> 256 channels
    conv, bn = model.layer2[0].downsample
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (2, 2)
    assert isinstance(bn, nn.BatchNorm2d)
    r18 = cnnzoo.create_model("resnet18")
    assert [n for n, m in r18.named_modules() if n.endswith("downsample")] == [
        f"layer{i}.0.downsample" for i in (2, 3, 4)
    ]


# --- Parameter counts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", sorted(CIFAR_PARAMS))
def test_cifar_resnet_parameter_counts(depth):
    model = cnnzoo.create_model(f"resnet{depth}", num_classes=10)
    assert n_params(model) == CIFAR_PARAMS[depth]
    assert len(blocks(model)) == (depth - 2) // 2  # 6n + 2 layers = 3n blocks of two convs + first conv + fc
    if depth <= 110:
        assert n_params(cnnzoo.create_model(f"plain{depth}", num_classes=10)) == CIFAR_PARAMS[depth]  # A is free


def test_option_b_adds_exactly_the_two_projections():
    a = cnnzoo.create_model("resnet20", num_classes=10, shortcut="A")
    b = cnnzoo.create_model("resnet20", num_classes=10, shortcut="B")
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # 1x1 conv + BN (weight, bias) at each transition
    assert n_params(b) == n_params(a) + projections > n_params(a)
    assert [type(m.downsample) for m in blocks(b) if m.downsample is not None] == [nn.Sequential] * 2


def test_plain18_34_lack_exactly_the_projection_parameters():
    for depth in (18, 34):
        res, plain = cnnzoo.create_model(f"resnet{depth}"), cnnzoo.create_model(f"plain{depth}")
        proj = sum(n_params(m.downsample) for m in blocks(res) if m.downsample is not None)
        assert n_params(plain) == n_params(res) - proj


def test_cifar_stem_adaptation():
    model = cnnzoo.create_model("resnet18_cifar", num_classes=10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.out_channels == 64
    assert isinstance(model.maxpool, nn.Identity)
    shapes = stage_outputs(model.eval(), torch.randn(1, 3, 32, 32), ["layer1", "layer4"])
    assert shapes == {"layer1": (1, 64, 32, 32), "layer4": (1, 512, 4, 4)}
    # Same blocks as ResNet-18: only the stem conv (7x7x3 -> 3x3x3) and the fc (1000 -> 10 classes) differ.
    diff = 64 * 3 * (49 - 9) + 513 * (1000 - 10)
    assert n_params(cnnzoo.create_model("resnet18", num_classes=1000)) - n_params(model) == diff


# --- Plain twins --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["plain18", "plain34", "plain20", "plain56"])
def test_plain_twins_have_no_shortcuts(name):
    model = cnnzoo.create_model(name, num_classes=10)
    assert not any("downsample" in n for n, _ in model.named_modules())
    assert blocks(model) and all(b.shortcut is None and b.downsample is None for b in blocks(model))
    twin = cnnzoo.create_model(name.replace("plain", "resnet"), num_classes=10)
    assert all(b.shortcut in ("A", "B") for b in blocks(twin))
    assert len(blocks(twin)) == len(blocks(model))


def _zero_last_bn(block: nn.Module) -> None:
    last = block.bn3 if isinstance(block, Bottleneck) else block.bn2
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)


@pytest.mark.parametrize("name", ["18", "20"])
def test_plain_block_is_relu_of_branch_and_residual_block_adds_x(name):
    plain = cnnzoo.create_model(f"plain{name}", num_classes=10).eval()
    res = cnnzoo.create_model(f"resnet{name}", num_classes=10).eval()
    for block in (plain.layer1[1], res.layer1[1]):  # an identity block (same shape in and out)
        _zero_last_bn(block)
    x = torch.randn(2, plain.layer1[1].conv1.in_channels, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain.layer1[1](x), torch.zeros_like(x))  # relu(branch(x)) = relu(0)
        assert torch.equal(res.layer1[1](x), torch.relu(x))  # relu(branch(x) + x) = relu(x)
        # The stride-2 first conv of a plain stage does the downsampling on its own.
        assert plain.layer2[0](x).shape == (2, 2 * x.shape[1], 4, 4)


def test_plain_bottleneck_block():
    block = Bottleneck(256, 64, shortcut=None).eval()
    _zero_last_bn(block)
    with torch.no_grad():
        assert torch.equal(block(torch.randn(1, 256, 4, 4)), torch.zeros(1, 256, 4, 4))
    with pytest.raises(ValueError, match="plain block"):
        BasicBlock(16, 32, 2, ZeroPadShortcut(16, 32, 2), shortcut=None)


# --- zero_init_residual -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "opts"), [("resnet18", {}), ("resnet50", {"variant": "v1"}), ("resnet20", {})])
def test_zero_init_residual_makes_every_block_the_identity(name, opts):
    model = cnnzoo.create_model(name, num_classes=10, zero_init_residual=True, **opts).eval()
    default = cnnzoo.create_model(name, num_classes=10, **opts).eval()
    checked = 0
    for block, other in zip(blocks(model), blocks(default), strict=True):
        x = torch.randn(2, block.conv1.in_channels, 6, 6)
        with torch.no_grad():
            skip = x if block.downsample is None else block.downsample(x)
            assert torch.equal(block(x), torch.relu(skip))
            assert not torch.equal(other(x), torch.relu(skip))
        checked += 1
    assert checked == len(blocks(model)) > 0


def test_zero_init_residual_is_refused_for_plain_nets():
    with pytest.raises(CnnzooError, match="unexpected keyword"):
        cnnzoo.create_model("plain18", zero_init_residual=True)
    with pytest.raises(CnnzooError, match="zero_init_residual needs residual blocks"):
        ResNet("myplain", BasicBlock, [1, 1, 1, 1], shortcut=None, zero_init_residual=True)


# --- Option A shortcuts -------------------------------------------------------------------------------------------


def test_option_a_is_parameter_free_subsampling_with_zero_channels():
    model = cnnzoo.create_model("resnet20", num_classes=10)
    shortcuts = [m.downsample for m in blocks(model) if m.downsample is not None]
    assert len(shortcuts) == 2 and all(isinstance(s, ZeroPadShortcut) for s in shortcuts)
    assert all(n_params(s) == 0 and not list(s.buffers()) for s in shortcuts)
    for size, out in ((32, 16), (7, 4)):  # odd sizes round up, as the 3x3 stride-2 conv does
        x = torch.randn(2, 16, size, size)
        y = shortcuts[0](x)
        assert y.shape == (2, 32, out, out)
        assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
        assert torch.equal(y[:, 16:], torch.zeros(2, 16, out, out))


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_stride2_transitions_work_with_both_options(shortcut):
    model = cnnzoo.create_model("resnet20", num_classes=10, shortcut=shortcut).eval()
    names = ["layer1", "layer2", "layer3"]
    assert stage_outputs(model, torch.randn(2, 3, 32, 32), names) == {
        "layer1": (2, 16, 32, 32),
        "layer2": (2, 32, 16, 16),
        "layer3": (2, 64, 8, 8),
    }  # section 4.2: 16/32/64 filters on 32/16/8 maps
    model1 = cnnzoo.create_model("resnet20", num_classes=10, in_channels=1, shortcut=shortcut).eval()
    assert stage_outputs(model1, torch.randn(2, 1, 28, 28), names)["layer3"] == (2, 64, 7, 7)
    with pytest.raises(CnnzooError, match=r"resnet20: shortcut must be one of 'A', 'B'; got 'C'"):
        cnnzoo.create_model("resnet20", shortcut="C")


def test_he_initialisation():
    model = cnnzoo.create_model("resnet56", num_classes=10)
    w = model.layer3[0].conv1.weight  # 32 -> 64 channels, 3x3: fan_out = 64 * 9 (fan_in would be 32 * 9)
    assert abs(w.std().item() / (2 / (64 * 9)) ** 0.5 - 1) < 0.05  # std = sqrt(2 / fan_out), He et al. 2015
    assert torch.equal(model.layer3[4].bn2.weight, torch.ones(64))


# --- CIFAR nets: forward/backward, input checks -------------------------------------------------------------------


@pytest.mark.parametrize("name", CIFAR_NETS)
def test_cifar_nets_at_32_and_28(name):
    """Shapes at 3x32x32 and 1x28x28 (meta device; the registry-wide test runs each net's real forward and backward,
    finite gradients included), and what the registry says of them."""
    for c, size in ((3, 32), (1, 28)):
        with torch.device("meta"):
            model = cnnzoo.create_model(name, num_classes=10, in_channels=c).train()
            assert model(torch.empty(2, c, size, size)).shape == (2, 10)
    info = cnnzoo.get_model_info(name)
    assert info.input_size == (3, 32, 32) and info.paper.startswith("He et al. 2016, Deep Residual Learning")


def test_registry_families():
    assert {"resnet18", "resnet152"} <= set(cnnzoo.list_models(family="resnet"))
    assert {"resnet20", "resnet1202", "resnet50_cifar"} <= set(cnnzoo.list_models(family="resnet_cifar"))
    assert cnnzoo.list_models(family="plain") == ["plain18", "plain34"]
    assert {"plain20", "plain110"} <= set(cnnzoo.list_models(family="plain_cifar"))
    assert cnnzoo.get_model_info("resnet50").input_size == (3, 224, 224)


def test_wrong_input_names_the_expected_shape():
    r20 = cnnzoo.create_model("resnet20", num_classes=10).eval()
    with pytest.raises(InputShapeError, match=r"resnet20 expects input of shape \(N, 3, H, W\) with H, W >= 4"):
        r20(torch.randn(1, 1, 32, 32))
    with pytest.raises(InputShapeError, match=r"resnet20 expects .* got \(1, 3, 2, 2\)"):
        r20(torch.randn(1, 3, 2, 2))
    with pytest.raises(InputShapeError, match=r"resnet20 expects .* got \(3, 32, 32\)"):
        r20(torch.randn(3, 32, 32))
    mono = cnnzoo.create_model("resnet18_cifar", num_classes=10, in_channels=1).eval()
    with pytest.raises(InputShapeError, match=r"resnet18_cifar expects input of shape \(N, 1, H, W\) with H, W >= 8"):
        mono(torch.randn(1, 3, 28, 28))
    r18 = cnnzoo.create_model("resnet18").eval()
    with pytest.raises(InputShapeError, match=r"resnet18 expects input of shape \(N, 3, H, W\) with H, W >= 32"):
        r18(torch.randn(1, 3, 16, 16))


def test_stride_and_shortcut_words_are_checked():
    with pytest.raises(CnnzooError, match=r"resnet20: shortcut must be one of 'A', 'B'; got False"):
        cnnzoo.create_model("resnet20", shortcut=False)
    model = cnnzoo.create_model("resnet20", shortcut="B")
    assert {b.shortcut for b in blocks(model)} == {"B"}
