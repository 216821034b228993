"""KAD's image encoder, with the official module names so that `best_valid.pt` loads strictly.

Followed: xiaoman-zhang/KAD (commit 591d999) `A3_CLIP/models/clip_tqn.py` (`ModelRes512`). The text
encoder (`CLP_clinical`) and the query decoder (`TQN_Model`), which DeViDe shares, are
`xbench_blocks.knowledge`'s. Written anew: nothing is imported from the official code, which needs an
internal S3 client and downloads ImageNet weights on construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

D_MODEL = 768  # the width of the query decoder's tokens
RESNET_CHANNELS = 2048


# --------------------------------------------------------------------------------------------------
# ResNet-50 with torchvision's module names and initialisation (torchvision.models.resnet50,
# weights=None). Written here so that the plugin needs no torchvision; a test checks it against
# torchvision's own resnet50 where that is installed.


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != width:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """torchvision's resnet50 (children in the same order: conv1 ... layer4, avgpool, fc)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        stages = []
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layer = []
            for i in range(blocks):
                layer.append(Bottleneck(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------------------------------
# Image encoder: ModelRes512


class ImageEncoder(nn.Module):
    """`ModelRes512`: ResNet-50 up to layer4, then a per-token MLP 2048 -> 2048 -> 768.

    The full ResNet is registered as `resnet` (its unused `fc` included) and its first eight
    children again as `res_features`: the two share modules, so the state_dict holds both key sets
    for the same tensors, as the released checkpoint does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet50()
        self.res_features = nn.Sequential(*list(self.resnet.children())[:-2])
        self.res_l1 = nn.Linear(RESNET_CHANNELS, RESNET_CHANNELS)
        self.res_l2 = nn.Linear(RESNET_CHANNELS, D_MODEL)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> tokens [B, (H/32)(W/32), 768], row-major over the feature grid."""
        grid = self.res_features(pixels)
        tokens = grid.flatten(2).transpose(1, 2)
        return self.res_l2(F.relu(self.res_l1(tokens)))


# Keys of `resnet.<child>` and of `res_features.<index>` that name the same tensors.
RESNET_ALIASES = {
    "conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7",
}  # fmt: skip
