"""KAD's three networks, with the official module names so that `best_valid.pt` loads strictly.

Followed: xiaoman-zhang/KAD (commit 591d999) `A3_CLIP/models/clip_tqn.py` (`ModelRes512`,
`CLP_clinical`, `TQN_Model`) and `A3_CLIP/models/transformer_decoder.py` (the DETR-style pre-norm
decoder whose `forward` returns the last layer's cross-attention). Written anew: nothing is imported
from the official code, which needs an internal S3 client and downloads ImageNet weights on
construction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xbench_core import PreNormDecoderLayer

# The decoder's width, heads, feed-forward width, depth and dropout (TQN_Model.__init__).
D_MODEL = 768
HEADS = 4
FFN = 1024
LAYERS = 4
DROPOUT = 0.1
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


# --------------------------------------------------------------------------------------------------
# Text encoder: CLP_clinical


class TextEncoder(nn.Module):
    """`CLP_clinical`: Med-KEBERT (`bert_model`, with pooler) and `mlp_embed` on the pooler output."""

    def __init__(self, bert_config: object) -> None:
        super().__init__()
        from transformers import BertModel

        self.bert_model = BertModel(bert_config, add_pooling_layer=True)
        hidden = int(bert_config.hidden_size)  # type: ignore[attr-defined]
        # Official: Linear(768, 768), GELU, Linear(768, 768) with a 768-wide BERT; a tiny test
        # BERT only changes the first input width.
        self.mlp_embed = nn.Sequential(
            nn.Linear(hidden, D_MODEL), nn.GELU(), nn.Linear(D_MODEL, D_MODEL)
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        for m in self.mlp_embed:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=D_MODEL**-0.5)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`encode_text`: mlp_embed(pooler_output), not normalised -> [Q, 768]."""
        out = self.bert_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.mlp_embed(out.pooler_output)


# --------------------------------------------------------------------------------------------------
# Fusion: TQN_Model with the DETR-style pre-norm decoder


class Decoder(nn.Module):
    """`TransformerDecoder`: the layers, then the final norm (shared with TQN's `decoder_norm`)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            PreNormDecoderLayer(D_MODEL, HEADS, FFN, DROPOUT) for _ in range(LAYERS)
        )
        self.norm = norm

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (normalised output [Q, B, d], the LAST layer's cross-attention [B, Q, N]).

        Only the last map is returned, as the official decoder does (`return output, ws`)."""
        weights = None
        for layer in self.layers:
            tgt, weights = layer(tgt, memory)
        assert weights is not None
        return self.norm(tgt), weights


class QueryDecoder(nn.Module):
    """`TQN_Model`: shared `decoder_norm` on image tokens and queries, decoder, `mlp_head` -> 2."""

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.decoder_norm = nn.LayerNorm(D_MODEL)
        self.decoder = Decoder(self.decoder_norm)
        self.dropout_feas = nn.Dropout(DROPOUT)
        self.mlp_head = nn.Sequential(nn.Linear(D_MODEL, 2))
        self.apply(_init_like_tqn)

    def forward(
        self, image_tokens: torch.Tensor, queries: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_tokens [B, N, d], queries [Q, d] -> (logits [B, Q, 2], attention [B, Q, N])."""
        batch = image_tokens.shape[0]
        memory = self.decoder_norm(image_tokens.transpose(0, 1))
        tgt = self.decoder_norm(queries.unsqueeze(1).expand(-1, batch, -1))
        features, attention = self.decoder(tgt, memory)
        features = self.dropout_feas(features).transpose(0, 1)
        return self.mlp_head(features), attention


def _init_like_tqn(module: nn.Module) -> None:
    # TQN_Model._init_weights: N(0, 0.02) for linear and attention projection weights.
    if isinstance(module, nn.Linear):
        module.weight.data.normal_(mean=0.0, std=0.02)
    elif isinstance(module, nn.MultiheadAttention):
        module.in_proj_weight.data.normal_(mean=0.0, std=0.02)
        module.out_proj.weight.data.normal_(mean=0.0, std=0.02)


class KADNetwork(nn.Module):
    """Everything KAD runs, under one module so that the engine moves and casts it at once.

    The attribute names are the three sub-dicts of `best_valid.pt` (`image_encoder`,
    `text_encoder`) except the fusion module, which the file calls `model`.
    """

    def __init__(self, bert_config: object, *, initialize: bool = True) -> None:
        super().__init__()
        # Without `initialize`, the image encoder and the decoder are allocated but not
        # initialised (their weights are about to come from a checkpoint; initialising 60 M
        # parameters takes seconds). They hold no non-persistent buffer, so a strict load
        # overwrites every value. BERT keeps its own construction: its position ids are such a
        # buffer.
        self.image_encoder = _built(ImageEncoder, initialize)
        self.text_encoder = TextEncoder(bert_config)
        self.fusion = _built(QueryDecoder, initialize)

    def forward(
        self, pixels: torch.Tensor, queries: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels [B, 3, H, W], query embeddings [Q, 768] -> (logits [B, Q, 2], attention [B, Q, N])."""
        return self.fusion(self.image_encoder(pixels), queries)


def _built(cls: type[nn.Module], initialize: bool) -> nn.Module:
    """An instance of `cls`, initialised, or allocated on the CPU with uninitialised values."""
    if initialize:
        return cls()
    with torch.device("meta"):
        module = cls()
    persistent = set(module.state_dict())
    transient = [name for name, _ in module.named_buffers() if name not in persistent]
    if transient:  # a checkpoint would not fill them
        raise RuntimeError(f"{cls.__name__} has non-persistent buffers {transient}")
    return module.to_empty(device="cpu")
