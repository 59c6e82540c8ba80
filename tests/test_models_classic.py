"""AlexNet, VGG and GoogLeNet: torchvision parity, the papers' parameter counts, auxiliary heads."""

from __future__ import annotations

import pytest
import torch
import torchvision

import cnnzoo
from cnnzoo.errors import InputShapeError

TORCHVISION_NAMES = [
    "alexnet",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
    "googlenet",
]


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _torchvision_twin(name: str, ours: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """torchvision's model of the same name, built on the meta device (no init cost) and given our weights."""
    with torch.device("meta"):
        kwargs |= {} if name == "alexnet" else {"init_weights": False}  # init is skipped on meta anyway; no warning
        theirs = getattr(torchvision.models, name)(weights=None, **kwargs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict(), strict=True, assign=True)
    return theirs


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_torchvision_state_dict_loads_strict_and_gives_identical_outputs(name):
    ours = cnnzoo.create_model(name, num_classes=1000).eval()
    theirs = _torchvision_twin(name, ours).eval()
    assert _params(ours) == _params(theirs)
    x = torch.randn(1, 3, 64, 64)  # 64x64: the adaptive pools make it valid for both, at a fraction of 224's cost
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_googlenet_training_outputs_match_torchvision_including_aux_heads():
    ours = cnnzoo.create_model("googlenet", num_classes=1000).train()
    theirs = _torchvision_twin("googlenet", ours).train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)  # same seed, same order of dropout draws -> same masks
    a = ours(x)
    torch.manual_seed(1)
    b = theirs(x)
    assert len(a) == len(b) == 3
    for mine, tv in zip(a, b, strict=True):  # (logits, aux2, aux1), in torchvision's order
        torch.testing.assert_close(mine, tv, rtol=0, atol=0)


def test_googlenet_transform_input_matches_torchvision():
    ours = cnnzoo.create_model("googlenet", num_classes=10, transform_input=True, aux_logits=False).eval()
    theirs = _torchvision_twin("googlenet", ours, num_classes=10, transform_input=True, aux_logits=False).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
        plain = cnnzoo.create_model("googlenet", num_classes=10, aux_logits=False).eval()
        plain.load_state_dict(ours.state_dict())
        assert not torch.equal(plain(x), ours(x))  # the option does something


def test_alexnet_paper_has_the_papers_parameter_count_and_init():
    model = cnnzoo.create_model("alexnet_paper", num_classes=1000)
    assert _params(model) == 62_378_344
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert sum(isinstance(m, torch.nn.LocalResponseNorm) for m in model.modules()) == 2
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert all(p.kernel_size == 3 and p.stride == 2 for p in pools) and len(pools) == 3  # overlapping pooling
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    biases = [float(m.bias.detach().mean()) for m in layers]
    assert biases == [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # section 5
    kinds = [type(m).__name__ for m in model.classifier]  # section 4.2: dropout on the outputs of FC6 and FC7
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert model.eval()(torch.randn(1, 3, 227, 227)).shape == (1, 1000)
    with pytest.raises(InputShapeError, match=r"alexnet_paper expects input of shape \(N, 3, 227, 227\)"):
        model(torch.randn(1, 3, 224, 224))


def _lrn_by_hand(a: torch.Tensor, *, k: float, alpha: float, beta: float) -> torch.Tensor:
    """b_i = a_i / (k + alpha * sum_{j=i-2}^{i+2} a_j^2)^beta, zero maps beyond the edges."""
    sq = torch.nn.functional.pad(a.square(), (0, 0, 0, 0, 2, 2))
    window = sum(sq[:, j : j + a.shape[1]] for j in range(5))
    return a / (k + alpha * window) ** beta


def test_alexnet_lrn_is_the_papers_equation():
    """Section 3.3: k=2, n=5, alpha=1e-4 on the sum of squares, beta=0.75; two towers normalise within each half."""
    from cnnzoo.models._common import lrn

    a = 30 * torch.randn(2, 8, 3, 3)  # large activations, where alpha matters
    torch.testing.assert_close(
        lrn(size=5, alpha=1e-4, beta=0.75, k=2.0)(a), _lrn_by_hand(a, k=2, alpha=1e-4, beta=0.75)
    )
    two = lrn(size=5, alpha=1e-4, beta=0.75, k=2.0, groups=2)(a)
    halves = [_lrn_by_hand(h, k=2, alpha=1e-4, beta=0.75) for h in a.chunk(2, 1)]
    torch.testing.assert_close(two, torch.cat(halves, 1))
    assert not torch.allclose(two, lrn(size=5, alpha=1e-4, beta=0.75, k=2.0)(a))  # the towers' edge maps differ


def test_alexnet_two_towers():
    """The paper's grouped convs (conv2, conv4, conv5 across two GPUs): 60,965,224 parameters, 0.72 GMACs."""
    from cnnzoo.analysis.profile import profile_model

    with torch.device("meta"):
        model = cnnzoo.create_model("alexnet_2tower_paper")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    one, two = profile_model("alexnet_paper"), profile_model("alexnet_2tower_paper")
    assert (one["params"], two["params"]) == (62_378_344, 60_965_224)
    assert (round(one["macs"] / 1e9, 2), round(two["macs"] / 1e9, 2)) == (1.14, 0.72)


def test_googlenet_paper_init_is_the_bvlc_reproductions():
    """Caffe's "xavier" filler, U(+-sqrt(3 / fan_in)); biases 0.2, the classifiers' 0 (bvlc_googlenet)."""
    model = cnnzoo.create_model("googlenet_paper", num_classes=1000)
    classifiers = {"fc", "aux1.fc2", "aux2.fc2"}
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            bound = (3 / m.weight[0].numel()) ** 0.5
            w = m.weight.detach()
            assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound, name
            assert torch.equal(m.bias, torch.full_like(m.bias, 0.0 if name in classifiers else 0.2)), name


@pytest.mark.parametrize("name", ["googlenet", "googlenet_paper"])
def test_googlenet_aux_heads_in_training_only(name):
    """Shapes on the meta device (the real arithmetic of the heads is checked against torchvision above and in the
    registry-wide forward/backward test)."""
    with torch.device("meta"):
        model = cnnzoo.create_model(name, num_classes=10).train()
        x = torch.empty(2, 3, 224, 224)
        out = model(x)
        assert isinstance(out, tuple) and len(out) == 3 and all(o.shape == (2, 10) for o in out)
        assert isinstance(model.eval()(x), torch.Tensor)
        no_aux = cnnzoo.create_model(name, num_classes=10, aux_logits=False)
        for mode in (True, False):
            assert isinstance(no_aux.train(mode)(x), torch.Tensor)
    assert _params(no_aux) < _params(model)


def test_googlenet_paper_is_the_paper_not_torchvision():
    paper = cnnzoo.create_model("googlenet_paper", num_classes=1000)
    tv = cnnzoo.create_model("googlenet", num_classes=1000)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in paper.modules())
    assert sum(isinstance(m, torch.nn.LocalResponseNorm) for m in paper.modules()) == 2
    assert paper.inception3a.branch3[1].conv.kernel_size == (5, 5)  # the paper's 5x5
    assert tv.inception3a.branch3[1].conv.kernel_size == (3, 3)  # torchvision's known substitution
    assert paper.dropout.p == 0.4 and paper.aux1.dropout.p == 0.7
    assert isinstance(paper.aux1.pool, torch.nn.AvgPool2d) and paper.aux1.pool.kernel_size == 5
    assert paper.aux1.pool.stride == 3


CIFAR_NAMES = ["alexnet_cifar", "vgg11_cifar", "vgg13_cifar", "vgg16_cifar", "vgg19_cifar", "googlenet_cifar"]


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_cifar_nets_give_plain_logits_at_rgb_32_and_gray_28(name):
    """CIFAR shape (3x32x32) in training mode: one tensor of 10 logits (no auxiliary heads by default); MNIST shape
    (1x28x28) too. Shapes only (meta device): the registry-wide test runs every net's real forward and backward."""
    with torch.device("meta"):
        out = cnnzoo.create_model(name, num_classes=10).train()(torch.empty(2, 3, 32, 32))
        assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
        gray = cnnzoo.create_model(name, num_classes=10, in_channels=1).eval()
        assert gray(torch.empty(2, 1, 28, 28)).shape == (2, 10)


def test_googlenet_cifar_optional_aux_heads():
    with torch.device("meta"):  # shapes only
        model = cnnzoo.create_model("googlenet_cifar", num_classes=10, aux_logits=True).train()
        out = model(torch.empty(2, 3, 32, 32))
        assert isinstance(out, tuple) and [o.shape for o in out] == [(2, 10)] * 3
        assert model.eval()(torch.empty(2, 3, 32, 32)).shape == (2, 10)


def test_googlenet_paper_needs_224():
    """The paper's auxiliary heads (avg pool 5x5/3 then FC on 4x4x128) fix the input at 224x224."""
    with torch.device("meta"):
        model = cnnzoo.create_model("googlenet_paper", num_classes=10).eval()
        with pytest.raises(InputShapeError, match=r"googlenet_paper expects input of shape \(N, 3, 224, 224\)"):
            model(torch.empty(1, 3, 256, 256))


def test_vgg_cfgs_are_table_1():
    from cnnzoo.models.vgg import CFGS

    weight_layers = {k: sum(v != "M" for v in cfg) + 3 for k, cfg in CFGS.items()}  # + 3 FC layers
    assert weight_layers == {"A": 11, "B": 13, "D": 16, "E": 19}
    assert all(cfg.count("M") == 5 for cfg in CFGS.values())


def test_in_channels_changes_only_the_first_conv():
    with torch.device("meta"):  # parameter counts need no memory
        gray = cnnzoo.create_model("vgg11", num_classes=10, in_channels=1)
        rgb = cnnzoo.create_model("vgg11", num_classes=10, in_channels=3)
        gnet = cnnzoo.create_model("googlenet", num_classes=10, in_channels=1)
    assert _params(rgb) - _params(gray) == 64 * 2 * 9  # two fewer input channels of 64 3x3 filters
    assert gnet.conv1.conv.in_channels == 1 and gnet.conv2.conv.in_channels == 64


# The smallest square input each net accepts (its last pool still has an output) and the error one pixel below.
MIN_SIZES = {"alexnet": 63, "vgg11": 32, "vgg19_bn": 32, "vgg11_cifar": 17, "alexnet_cifar": 8, "googlenet": 15}


@pytest.mark.parametrize(("name", "size"), MIN_SIZES.items())
def test_min_size_is_exact(name, size):
    with torch.device("meta"):  # shapes only: the check and the layers' shape rules, no arithmetic
        model = cnnzoo.create_model(name, num_classes=10).eval()
        assert model(torch.empty(1, 3, size, size)).shape == (1, 10)
        with pytest.raises(InputShapeError, match=rf"{name} expects input of shape \(N, 3, H, W\) with H, W >= {size}"):
            model(torch.empty(1, 3, size - 1, size))
