"""Model registry: ``build_model(name, **kwargs)`` turns a name plus JSON-able options into a module.

Every factory takes ``num_classes`` and ``input_shape`` ((C, L) for 1-D data, (C, H, W) for
images) plus its own options with defaults. Checkpoints store (name, kwargs), so the same pair
must always rebuild the same architecture, and lists are accepted wherever tuples are.

Built-in names:

* ``mlp``: flatten -> Linear+ReLU per entry of ``widths`` -> Linear.
* ``cnn1d``: the small MNIST-1D CNN (3 x Conv1d k5 s2 p1 + ReLU, optional BatchNorm) -> Linear.
  64 channels by default (43k parameters): 32 channels (12k) only reaches ~89% test accuracy
  on MNIST-1D after 20 epochs of Adam, 64 reaches ~93%.
* ``resnet20`` / ``resnet32`` / ``resnet56``: CIFAR ResNets of He et al. 2016. ``shortcut="B"``
  (default) uses 1x1 conv + BN projections where the shape changes; ``"A"`` is the paper's
  parameter-free subsample + zero-pad variant (the one behind the published 0.27M / 0.85M counts;
  "B" adds 2,752 parameters).
* ``wrn-D-K``: Wide ResNet (Zagoruyko & Komodakis 2016), pre-activation, D = 6n+4, width K.
* ``vgg16-bn``: VGG-16 with BatchNorm for CIFAR, as in the SWA repository.
* ``preresnet-D``: pre-activation ResNet as in the SWA repository: bottleneck blocks when
  D >= 44 (then D = 9n+2 is required), basic blocks otherwise (D = 6n+2).
* ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=None, **kwargs)``
  (``num_classes`` is passed; never pretrained weights: they would be downloaded).
* ``package.module:factory``: any importable callable returning an ``nn.Module``. Imported
  only when the user names it (``landscape.factories``); a checkpoint that names one is
  refused unless the same name is given.

All image models end in adaptive average pooling, so they run on any H x W (VGG needs >= 32).
ReLUs are never in-place: double-backward (Hessian-vector products) must see unmodified inputs.
"""

from __future__ import annotations

import inspect
import math
import re
from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from landscape.errors import UserError
from landscape.factories import BUILTIN_PREFIXES, import_factory

MODEL_NAMES: list[str] = [
    "mlp",
    "cnn1d",
    "resnet20",
    "resnet32",
    "resnet56",
    "wrn-D-K",
    "vgg16-bn",
    "preresnet-D",
]

_WRN_RE = re.compile(r"wrn-(\d+)-(\d+)")
_PRERESNET_RE = re.compile(r"preresnet-(\d+)")
_HELP = (
    "valid models: mlp, cnn1d, resnet20, resnet32, resnet56, vgg16-bn, "
    "wrn-D-K (D = 6n+4, e.g. wrn-28-10), preresnet-D (e.g. preresnet-110), "
    "torchvision:NAME (e.g. torchvision:resnet18) or package.module:factory"
)


# ---------------------------------------------------------------- argument checks


def _classes(num_classes: Any) -> int:
    # bool is an int subclass; JSON never turns 10 into True, so rejecting it catches mistakes.
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def _shape(input_shape: Any, ndim: int | None, model: str) -> tuple[int, ...]:
    """Validate input_shape; lists (from JSON) become tuples."""
    ok = isinstance(input_shape, (list, tuple)) and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape
    )
    if not ok or not input_shape or (ndim is not None and len(input_shape) != ndim):
        want = {2: "(C, L)", 3: "(C, H, W)"}.get(ndim, "a tuple of positive ints")
        raise UserError(f"model {model!r} needs input_shape {want}, got {input_shape!r}")
    return tuple(input_shape)


def _ints(values: Any, option: str) -> list[int]:
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise UserError(f"{option} must be a list of positive integers, got {values!r}")
    return list(values)


def _prob(p: Any, option: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise UserError(f"{option} must be a number in [0, 1), got {p!r}")
    return float(p)


def _kaiming_fan_out(model: nn.Module) -> nn.Module:
    """Init of the WRN / SWA reference code: N(0, 2/(k*k*out)) convs, BN = identity, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return model


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


# ---------------------------------------------------------------- mlp / cnn1d


def mlp(*, num_classes: int, input_shape: Sequence[int], widths: Sequence[int] = (256, 256)) -> nn.Module:
    """Flatten -> [Linear -> ReLU] per width -> Linear. PyTorch default init."""
    num_classes = _classes(num_classes)
    dim = math.prod(_shape(input_shape, None, "mlp"))
    layers: list[nn.Module] = [nn.Flatten()]
    for w in _ints(widths, "widths"):
        layers += [nn.Linear(dim, w), nn.ReLU()]
        dim = w
    layers.append(nn.Linear(dim, num_classes))
    return nn.Sequential(*layers)


class CNN1d(nn.Module):
    """The MNIST-1D ConvBase shape: three stride-2 convs then one linear layer."""

    def __init__(self, num_classes: int, in_channels: int, length: int, channels: int, bn: bool):
        super().__init__()
        layers: list[nn.Module] = []
        c, n = in_channels, length
        for _ in range(3):
            # A conv bias right before BatchNorm is redundant (BN's shift absorbs it).
            layers.append(nn.Conv1d(c, channels, 5, stride=2, padding=1, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm1d(channels))
            layers.append(nn.ReLU())
            c, n = channels, (n + 2 * 1 - 5) // 2 + 1
        if n < 1:
            raise UserError(f"cnn1d needs input length >= 15 (three stride-2 convs), got {length}")
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c * n, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # MNIST-1D ships (N, L); accept it as (N, 1, L).
            x = x.unsqueeze(1)
        return self.fc(self.features(x).flatten(1))


def cnn1d(*, num_classes: int, input_shape: Sequence[int], channels: int = 64, bn: bool = False) -> nn.Module:
    """Small 1-D CNN for MNIST-1D (PyTorch default init, as in the MNIST-1D repository)."""
    c, length = _shape(input_shape, 2, "cnn1d")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise UserError(f"channels must be a positive integer, got {channels!r}")
    if not isinstance(bn, bool):
        raise UserError(f"bn must be true or false, got {bn!r}")
    return CNN1d(_classes(num_classes), c, length, channels, bn)


# ---------------------------------------------------------------- CIFAR ResNet (He et al.)


class _PadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, extra: int):
        super().__init__()
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.extra // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra - half))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = (
                _PadShortcut(cout - cin)
                if shortcut == "A"
                else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int, shortcut: str):
        super().__init__()
        n = (depth - 2) // 6
        self.conv, self.bn = _conv3x3(in_channels, 16), nn.BatchNorm2d(16)
        stages, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(_BasicBlock(cin, cout, 2 if i > 0 and j == 0 else 1, shortcut))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        # Kaiming-normal (fan_in) convs and linear, BN identity: the common CIFAR-ResNet reference.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def resnet(depth: int, /, *, num_classes: int, input_shape: Sequence[int], shortcut: str = "B") -> nn.Module:
    """CIFAR ResNet-depth, depth = 6n+2. shortcut "B" (projection, default) or "A" (zero-pad)."""
    c = _shape(input_shape, 3, f"resnet{depth}")[0]
    if shortcut not in ("A", "B"):
        raise UserError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
    return CifarResNet(depth, _classes(num_classes), c, shortcut)


# ---------------------------------------------------------------- Wide ResNet


class _WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3 - BN-ReLU-dropout-conv3x3, plus the skip."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3x3(cout, cout)
        self.dropout = dropout
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection reads the pre-activated input, as in the reference implementation.
        skip = x if self.shortcut is None else self.shortcut(out)
        out = F.relu(self.bn2(self.conv1(out)))
        out = F.dropout(out, self.dropout, self.training)
        return self.conv2(out) + skip


class WideResNet(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int, dropout: float):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.conv = _conv3x3(in_channels, 16)
        stages, cin = [], 16
        for i, cout in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(_WideBlock(cin, cout, 2 if i > 0 and j == 0 else 1, dropout))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _kaiming_fan_out(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv(x))))
        return self.fc(self.pool(F.relu(self.bn(x))).flatten(1))


def wrn(depth: int, width: int, /, *, num_classes: int, input_shape: Sequence[int], dropout: float = 0.0) -> nn.Module:
    """WRN-depth-width (depth = 6n+4); dropout between the two convs of each block."""
    c = _shape(input_shape, 3, f"wrn-{depth}-{width}")[0]
    return WideResNet(depth, width, _classes(num_classes), c, _prob(dropout, "dropout"))


# ---------------------------------------------------------------- VGG-16-BN (SWA repo)

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        # Identity at 32x32 (features end at 1x1); lets larger images reach the 512-wide classifier.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(512, 512), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(512, 512), nn.ReLU(),
            nn.Linear(512, num_classes),
        )
        _kaiming_fan_out(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg16_bn(*, num_classes: int, input_shape: Sequence[int], dropout: float = 0.5) -> nn.Module:
    """VGG-16 with BatchNorm, CIFAR classifier 512-512-classes (SWA repo)."""
    c, h, w = _shape(input_shape, 3, "vgg16-bn")
    if min(h, w) < 32:  # five 2x2 max-pools need at least 32 pixels per side
        raise UserError(f"vgg16-bn needs images of at least 32x32, got {h}x{w}")
    return VGG(_classes(num_classes), c, _prob(dropout, "dropout"))


# ---------------------------------------------------------------- PreResNet (SWA repo)


class _PreBasic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3x3(cin, planes, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), _conv3x3(planes, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + skip


class _PreBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, planes, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), _conv3x3(planes, planes, stride)
        self.bn3, self.conv3 = nn.BatchNorm2d(planes), nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return self.conv3(F.relu(self.bn3(out))) + skip


class PreResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int):
        super().__init__()
        block: type[_PreBasic] | type[_PreBottleneck]
        block, n = (_PreBottleneck, (depth - 2) // 9) if depth >= 44 else (_PreBasic, (depth - 2) // 6)
        self.conv1 = _conv3x3(in_channels, 16)
        cin, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            down = None
            if stride != 1 or cin != planes * block.expansion:
                down = nn.Sequential(nn.Conv2d(cin, planes * block.expansion, 1, stride, bias=False))
            blocks = [block(cin, planes, stride, down)]
            cin = planes * block.expansion
            blocks += [block(cin, planes, 1, None) for _ in range(1, n)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _kaiming_fan_out(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(self.pool(F.relu(self.bn(x))).flatten(1))


def preresnet(depth: int, /, *, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """PreResNet-depth as in the SWA repo."""
    c = _shape(input_shape, 3, f"preresnet-{depth}")[0]
    return PreResNet(depth, _classes(num_classes), c)


# ---------------------------------------------------------------- registry

_FIXED: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn1d": cnn1d,
    "resnet20": partial(resnet, 20),
    "resnet32": partial(resnet, 32),
    "resnet56": partial(resnet, 56),
    "vgg16-bn": vgg16_bn,
}


def _pattern_factory(name: str) -> Callable[..., nn.Module] | None:
    """Factories for the parametrised names wrn-D-K and preresnet-D; None if not such a name."""
    if name.startswith("wrn"):
        m = _WRN_RE.fullmatch(name)
        depth, width = (int(m[1]), int(m[2])) if m else (0, 0)
        if depth < 10 or (depth - 4) % 6 or width < 1:
            raise UserError(f"malformed Wide ResNet name {name!r}: expected wrn-D-K with D = 6n+4 >= 10 "
                            f"and K >= 1, e.g. wrn-28-10 or wrn-16-4")
        return partial(wrn, depth, width)
    if name.startswith("preresnet"):
        m = _PRERESNET_RE.fullmatch(name)
        depth = int(m[1]) if m else 0
        ok = depth >= 44 and (depth - 2) % 9 == 0 or 8 <= depth < 44 and (depth - 2) % 6 == 0
        if not ok:
            raise UserError(f"malformed PreResNet name {name!r}: expected preresnet-D with D = 6n+2 "
                            f"below 44 (basic blocks) or D = 9n+2 from 44 (bottlenecks), "
                            f"e.g. preresnet-20, preresnet-110, preresnet-164")
        return partial(preresnet, depth)
    return None


def _torchvision_factory(name: str) -> Callable[..., nn.Module]:
    """``torchvision:ARCH`` through torchvision's own registry, always without pretrained weights
    (the weights come from the checkpoint; a download is never started)."""
    import torchvision.models as tvm

    arch = name.split(":", 1)[1]
    known = tvm.list_models()
    if arch not in known:
        import difflib

        close = difflib.get_close_matches(arch, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"torchvision has no model {arch!r}{hint}; see torchvision.models.list_models()")

    def build(**kwargs: Any) -> nn.Module:
        for key in ("weights", "weights_backbone"):
            if kwargs.get(key) is not None:
                raise UserError(f"model {name!r}: option {key} is not accepted (pretrained weights would be "
                                "downloaded); the weights come from your checkpoint")
            kwargs.pop(key, None)
        try:
            return tvm.get_model(arch, weights=None, **kwargs)
        except (TypeError, ValueError) as exc:
            raise UserError(f"bad options for model {name!r}: {exc}") from None

    return build


def _check_options(factory: Callable[..., Any], name: str, kwargs: dict[str, Any]) -> None:
    """Turn unknown or missing options into a UserError before calling (TypeErrors from inside stay bugs)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature; let the call decide
        return
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        accepted = ", ".join(p.name for p in sig.parameters.values()
                             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        raise UserError(f"bad options for model {name!r}: {e}; it accepts: {accepted}") from e


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model `name` with `kwargs` (num_classes, input_shape and the model's own options)."""
    if not isinstance(name, str) or not name:
        raise UserError(f"unknown model {name!r}; {_HELP}")
    if ":" not in name:
        factory = _FIXED.get(name) or _pattern_factory(name)
        if factory is None:
            raise UserError(f"unknown model {name!r}; {_HELP}")
        _check_options(factory, name, kwargs)
        return factory(**kwargs)

    if name.startswith(BUILTIN_PREFIXES):
        kwargs.pop("input_shape", None)  # torchvision models take any input size
        return _torchvision_factory(name)(**kwargs)
    factory = import_factory(name, "model")
    try:
        params = inspect.signature(factory).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        # Only pass the standard arguments a user factory can take; its own options go through as given.
        kwargs = {k: v for k, v in kwargs.items()
                  if k not in ("num_classes", "input_shape") or takes_any or k in params}
    except (TypeError, ValueError):
        pass
    _check_options(factory, name, kwargs)
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def model_spec(name: str, options: dict[str, Any], num_classes: int, input_shape: Sequence[int]) -> dict[str, Any]:
    """``{"name", "kwargs"}`` of a model for data with ``num_classes`` and per-sample ``input_shape``:
    the user's options, with num_classes and input_shape filled in where not given
    (:func:`build_model` passes each factory only what it takes)."""
    kwargs = {"num_classes": int(num_classes), "input_shape": [int(d) for d in input_shape], **options}
    return {"name": name, "kwargs": kwargs}
