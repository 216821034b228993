"""BioViL and BioViL-T networks, in the module layout of the released state dicts.

Followed: microsoft/hi-ml (b67c1d2), hi-ml-multimodal/src/health_multimodal/
- image/model/model.py `ImageModel`: `encoder` then `projector` (an MLP of 1x1 convolutions:
  conv without bias, BatchNorm2d, ReLU, conv with bias, to the 128-d joint space); the projected
  patch embeddings keep the grid; the global embedding is their spatial mean;
- image/model/encoder.py `ImageEncoder` (BioViL: `encoder` = torchvision ResNet-50, its layer4 the
  patch grid) and `MultiImageEncoder` (BioViL-T: ResNet-50, `backbone_to_vit` 1x1 conv 2048 -> 256,
  and with no prior image the learned `missing_previous_emb` concatenated to every patch: 512
  channels); the ViT pooler (`vit_pooler`) runs only on a (current, prior) pair, which XBench never
  passes, so its parameters are held for the strict load and never run;
- image/model/resnet.py `ResNetHIML`: torchvision's ResNet, forward up to layer4 (fc unused but in
  the state dict);
- text/model/modelling_cxrbert.py `CXRBertModel`: BERT (BertForMaskedLM's `bert`, no pooler) and
  `cls_projection_head` (dense 768 -> 128, GELU, LayerNorm eps 1e-12, dense 128 -> 128) on the
  last hidden state of [CLS]; the masked-LM head (`cls.predictions`) is not needed and not built;
- vlp/inference_engine.py `_get_similarity_map_from_embeddings`: scipy.ndimage.gaussian_filter with
  sigma 1.5 on the patch grid (mode "reflect", truncate 4.0), here as two small matrices.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

JOINT_FEATURE_SIZE = 128  # pretrained.py JOINT_FEATURE_SIZE
VIT_DIM = 256  # MultiImageEncoder output_dim
VIT_BLOCKS = 3  # VisionTransformerPooler num_blocks
SIGMA = 1.5  # _get_similarity_map_from_embeddings sigma
TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter default


def resnet50_trunk() -> nn.Module:
    """torchvision's ResNet-50 (fc included: it is in the released state dict), no weights."""
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(block=Bottleneck, layers=[3, 4, 6, 3])


def resnet_patches(trunk: Any, x: torch.Tensor) -> torch.Tensor:
    """ResNetHIML.forward: the layer4 output [B, 2048, H/32, W/32]."""
    x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
    return trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(x))))


class _Attention(nn.Module):
    """MultiHeadAttentionLayer's parameters (proj_q/k/v without bias, proj with bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_q = nn.Linear(dim, dim, bias=False)
        self.proj_k = nn.Linear(dim, dim, bias=False)
        self.proj_v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)


class _Mlp(nn.Module):
    """timm Mlp's parameters (fc1, fc2; mlp_ratio 1)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim)


class VitPoolerWeights(nn.Module):
    """The parameters of BioViL-T's `VisionTransformerPooler` (3 blocks, `norm_post`, `type_embed`).

    It fuses a current and a prior image; on a single image (`previous_image=None`, the only
    case here) `MultiImageEncoder.forward` never calls it. Kept so that the released checkpoint
    loads strictly and is saved back whole; calling it is an error.
    """

    def __init__(self, dim: int = VIT_DIM, blocks: int = VIT_BLOCKS) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(dim) for _ in range(blocks)])
        self.norm_post = nn.LayerNorm(dim, eps=1e-6)
        self.type_embed = nn.Parameter(torch.zeros(2, 1, dim))

    def forward(self, *args: object) -> torch.Tensor:  # pragma: no cover - never called
        raise NotImplementedError("the ViT pooler fuses a prior image, which XBench never passes")


class ImageEncoder(nn.Module):
    """`ImageModel.encoder`: ResNet-50 (BioViL) or the multi-image encoder without a prior (BioViL-T)."""

    def __init__(self, multi_image: bool) -> None:
        super().__init__()
        self.multi_image = multi_image
        self.encoder = resnet50_trunk()
        if multi_image:
            self.backbone_to_vit = nn.Conv2d(2048, VIT_DIM, kernel_size=1, bias=False)
            self.vit_pooler = VitPoolerWeights()
            self.missing_previous_emb = nn.Parameter(torch.zeros(1, VIT_DIM, 1, 1))

    @property
    def output_dim(self) -> int:
        return 2 * VIT_DIM if self.multi_image else 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings [B, D, h, w] (D = 2048, or 512 = [current, missing prior] for BioViL-T)."""
        patches = resnet_patches(self.encoder, x)
        if not self.multi_image:
            return patches
        patches = self.backbone_to_vit(patches)
        b, _, h, w = patches.shape
        prior = self.missing_previous_emb.expand(b, -1, h, w).to(patches.dtype)
        return torch.cat([patches, prior], dim=1)


class Projector(nn.Module):
    """`ImageModel.projector`: MLP(use_1x1_convs=True), hidden and output size 128."""

    def __init__(self, input_dim: int, size: int = JOINT_FEATURE_SIZE) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(input_dim, size, kernel_size=1, bias=False),
            nn.BatchNorm2d(size),
            nn.ReLU(inplace=True),
            nn.Conv2d(size, size, kernel_size=1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ImageModel(nn.Module):
    """`ImageModel` without a downstream classifier: projected patch embeddings [B, 128, h, w]."""

    def __init__(self, multi_image: bool) -> None:
        super().__init__()
        self.encoder = ImageEncoder(multi_image)
        self.projector = Projector(self.encoder.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


class ProjectionHead(nn.Module):
    """`BertProjectionHead` of CXR-BERT."""

    def __init__(self, hidden_size: int, projection_size: int) -> None:
        super().__init__()
        self.dense_to_hidden = nn.Linear(hidden_size, projection_size)
        self.LayerNorm = nn.LayerNorm(projection_size, eps=1e-12)
        self.dense_to_output = nn.Linear(projection_size, projection_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.gelu(self.dense_to_hidden(hidden))
        return self.dense_to_output(self.LayerNorm(hidden))


class TextModel(nn.Module):
    """CXR-BERT: `bert` (no pooler) and `cls_projection_head`, keys as in the released weights."""

    def __init__(self, bert: Any, projection_size: int) -> None:  # a transformers BertModel
        super().__init__()
        self.bert = bert
        self.cls_projection_head = ProjectionHead(bert.config.hidden_size, projection_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Projected [CLS] embeddings [N, 128], not normalized (`get_projected_text_embeddings`)."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.cls_projection_head(hidden[:, 0, :])


class BioViLNetwork(nn.Module):
    """Both towers in one module, so that the engine places and casts them together."""

    def __init__(self, image: ImageModel, text: TextModel) -> None:
        super().__init__()
        self.image = image
        self.text = text


# ---- the Gaussian smoothing of the similarity map ------------------------------------------------
@lru_cache(maxsize=8)
def smoothing_matrix(n: int, sigma: float = SIGMA, truncate: float = TRUNCATE) -> np.ndarray:
    """[n, n] float64: row i holds the weights of `scipy.ndimage.gaussian_filter1d(x, sigma)[i]`
    over x (kernel radius int(truncate * sigma + 0.5), normalized exp(-x^2 / 2 sigma^2), mode
    "reflect": the signal continues mirrored about its edges, d c b a | a b c d | d c b a)."""
    radius = int(truncate * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / (sigma * sigma) * offsets.astype(np.float64) ** 2)
    weights /= weights.sum()
    out = np.zeros((n, n), np.float64)
    for i in range(n):
        j = np.mod(i + offsets, 2 * n)
        j = np.where(j >= n, 2 * n - 1 - j, j)
        np.add.at(out[i], j, weights)
    return out


def smooth(maps: torch.Tensor, sigma: float = SIGMA) -> torch.Tensor:
    """Gaussian smoothing of [..., h, w] maps on their grid: A_h @ map @ A_w^T, in float32."""
    h, w = maps.shape[-2:]
    rows = torch.from_numpy(smoothing_matrix(h, sigma)).to(maps.device, torch.float32)
    cols = torch.from_numpy(smoothing_matrix(w, sigma)).to(maps.device, torch.float32)
    return rows @ maps.float() @ cols.T


def truncated_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """timm trunc_normal_(std=0.02): normal truncated to [-2, 2] (absolute bounds)."""
    return nn.init.trunc_normal_(tensor, std=std, a=-2.0, b=2.0)


def initialize(network: BioViLNetwork) -> None:
    """Random weights in the spirit of the official initializers (replaced when weights load)."""
    encoder = network.image.encoder
    if encoder.multi_image:
        truncated_normal_(encoder.missing_previous_emb)
        truncated_normal_(encoder.vit_pooler.type_embed)
        for module in encoder.vit_pooler.modules():
            if isinstance(module, nn.Linear):
                truncated_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    # torchvision's ResNet sets its BatchNorm to the identity and the statistics to 0 / 1; give the
    # projector's BatchNorm statistics that move something, so that a test notices a lost load.
    bn: Any = network.image.projector.model[1]
    with torch.no_grad():
        bn.running_mean.normal_(0.0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
