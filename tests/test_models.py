"""Tests for the model registry (landscape.models)."""

import pytest
import torch
from torch import nn

from landscape.errors import UserError
from landscape.models import MODEL_NAMES, build_model

CIFAR = dict(num_classes=10, input_shape=(3, 32, 32))
MNIST1D = dict(num_classes=10, input_shape=(1, 40))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_factory(num_classes: int, hidden: int = 4) -> nn.Module:
    """A user factory that takes num_classes but not input_shape."""
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def not_a_model(**kwargs):
    return "not a module"


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "wrn-10-1", "wrn-16-1", "preresnet-20", "vgg16-bn"])
def test_cifar_models_forward(name):
    torch.manual_seed(0)
    model = build_model(name, **CIFAR)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_preresnet_bottleneck_forward():
    model = build_model("preresnet-47", **CIFAR)  # smallest bottleneck depth: 9n+2 >= 44
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_any_image_size_and_channels():
    model = build_model("resnet20", num_classes=5, input_shape=(1, 28, 20))
    assert model(torch.randn(2, 1, 28, 20)).shape == (2, 5)


@pytest.mark.parametrize("name", ["cnn1d", "mlp"])
@pytest.mark.parametrize("shape", [(2, 1, 40), (2, 40)])
def test_1d_models_forward(name, shape):
    model = build_model(name, **MNIST1D)
    assert model(torch.randn(*shape)).shape == (2, 10)


def test_cnn1d_batchnorm_and_options():
    model = build_model("cnn1d", **MNIST1D, bn=True, channels=8)
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert model(torch.randn(2, 1, 40)).shape == (2, 10)
    assert 10_000 < n_params(build_model("cnn1d", **MNIST1D)) < 100_000


def test_mlp_widths():
    model = build_model("mlp", **MNIST1D, widths=[8])
    assert n_params(model) == 40 * 8 + 8 + 8 * 10 + 10


@pytest.mark.parametrize(
    "name, kwargs, published",
    [
        ("resnet20", {}, 0.27e6),  # He et al. 2016, Table 6
        ("resnet56", {}, 0.85e6),
        ("wrn-28-10", {}, 36.5e6),  # Zagoruyko & Komodakis 2016
    ],
)
def test_parameter_counts(name, kwargs, published):
    count = n_params(build_model(name, **CIFAR, **kwargs))
    assert abs(count - published) / published < 0.03, count


def test_shortcut_a_matches_paper_exactly():
    # Option A is parameter-free; option B adds 1x1 conv + BN at the two stage transitions.
    a = n_params(build_model("resnet20", **CIFAR, shortcut="A"))
    b = n_params(build_model("resnet20", **CIFAR))
    assert a == 269_722
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert build_model("resnet20", **CIFAR, shortcut="A")(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "name, kwargs",
    [("resnet20", CIFAR), ("wrn-16-2", dict(CIFAR, dropout=0.3)), ("preresnet-20", CIFAR),
     ("cnn1d", dict(MNIST1D, bn=True)), ("mlp", dict(MNIST1D, widths=[32, 16]))],
)
def test_rebuild_is_identical_and_lists_accepted(name, kwargs):
    def spec(model):
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    first = spec(build_model(name, **kwargs))
    # Checkpoints store kwargs as JSON: tuples come back as lists.
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    assert spec(build_model(name, **kwargs)) == first
    assert spec(build_model(name, **as_json)) == first


def test_user_factory():
    model = build_model("tests.test_models:tiny_factory", **MNIST1D, hidden=3)
    assert model(torch.randn(2, 1, 40)).shape == (2, 10)


def test_user_factory_errors():
    with pytest.raises(UserError, match="import"):
        build_model("no_such_package_xyz.models:net", **CIFAR)
    with pytest.raises(UserError, match="no attribute"):
        build_model("tests.test_models:missing_factory", **CIFAR)
    with pytest.raises(UserError, match="not a torch.nn.Module"):
        build_model("tests.test_models:not_a_model", **CIFAR)
    with pytest.raises(UserError, match="bad options"):
        build_model("tests.test_models:tiny_factory", **CIFAR, depth=3)


@pytest.mark.parametrize(
    "name, match",
    [
        ("resnet999", "unknown model"),
        ("", "unknown model"),
        ("wrn-28", "malformed Wide ResNet"),
        ("wrn-27-10", "malformed Wide ResNet"),  # 27 is not 6n+4
        ("wrn-28-x", "malformed Wide ResNet"),
        ("preresnet-21", "malformed PreResNet"),
        ("preresnet-56x", "malformed PreResNet"),
        ("preresnet-50", "malformed PreResNet"),  # >= 44 needs 9n+2 (SWA convention)
        ("not a:spec", "malformed model factory"),
    ],
)
def test_bad_names(name, match):
    with pytest.raises(UserError, match=match):
        build_model(name, **CIFAR)


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError) as info:
        build_model("resnet18", **CIFAR)
    for listed in ("mlp", "cnn1d", "resnet20", "resnet56", "vgg16-bn", "wrn-D-K", "preresnet-D"):
        assert listed in str(info.value)
    assert set(MODEL_NAMES) >= {"mlp", "cnn1d", "resnet20", "resnet32", "resnet56", "vgg16-bn"}


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet20", dict(CIFAR, shortcut="C")),
        ("resnet20", dict(CIFAR, widths=[3])),  # an option of another model
        ("resnet20", dict(num_classes=10)),  # input_shape missing
        ("resnet20", dict(num_classes=10, input_shape=(1, 40))),  # 1-D shape for an image model
        ("cnn1d", dict(MNIST1D, bn="yes")),
        ("mlp", dict(MNIST1D, widths=[0])),
        ("mlp", dict(num_classes=0, input_shape=(1, 40))),
        ("wrn-16-1", dict(CIFAR, dropout=1.5)),
        ("vgg16-bn", dict(num_classes=10, input_shape=(3, 16, 16))),
    ],
)
def test_bad_options(name, kwargs):
    with pytest.raises(UserError):
        build_model(name, **kwargs)
