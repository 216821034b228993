"""MedKLIP's network with the official module names, so that checkpoint_final.pth loads strictly.

Follows Sample_Zero-Shot_Grounding_RSNA/models/model_MedKLIP.py (`MedKLIP.__init__`,
`image_encoder`, `forward`) with the config d_model 256, N 4, H 4, res_base_model resnet50,
attribute_set_size 2. The text side is not part of it: the frozen Bio_ClinicalBERT CLS vectors of
the entity descriptions arrive as `entity_book`, a non-persistent buffer (the official code keeps
them as a plain attribute), so the state_dict holds exactly the official keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from xbench_blocks.fusion import PreNormDecoder

D_MODEL = 256
LAYERS = 4
HEADS = 4
FEEDFORWARD = 1024
TEXT_DIM = 768
RES_DIM = 1024  # ResNet-50 layer3 channels: resnet.fc.in_features / 2


class MedKLIPNetwork(nn.Module):
    """ResNet-50 to layer3, per-token projection, entity queries, 4-layer decoder, classifier."""

    entity_book: Tensor  # a buffer, [E, TEXT_DIM]

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        self.disease_embedding_layer = nn.Linear(TEXT_DIM, D_MODEL)
        self.cl_fc = nn.Linear(D_MODEL, TEXT_DIM)  # training-only location loss; kept for the load
        # children()[:-3] drops layer4, avgpool and fc: keys res_features.{0,1,4,5,6}
        resnet = torchvision.models.resnet50(weights=None)
        self.res_features = nn.Sequential(*list(resnet.children())[:-3])
        self.res_l1 = nn.Linear(RES_DIM, RES_DIM)
        self.res_l2 = nn.Linear(RES_DIM, D_MODEL)
        self.decoder = PreNormDecoder(D_MODEL, HEADS, FEEDFORWARD, LAYERS, dropout=0.1)
        self.dropout_feas = nn.Dropout(0.1)
        self.classifier = nn.Linear(D_MODEL, 2)
        self.register_buffer("entity_book", torch.zeros(0, TEXT_DIM), persistent=False)

    def image_tokens(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """[B, 3, H, W] -> decoder memory [h*w, B, 256] and the grid (h, w)."""
        features = self.res_features(images)  # B, 1024, h, w
        grid = (int(features.shape[-2]), int(features.shape[-1]))
        tokens = features.flatten(2).transpose(1, 2)  # rearrange 'b d n1 n2 -> b (n1 n2) d'
        tokens = self.res_l2(F.relu(self.res_l1(tokens)))
        return tokens.transpose(0, 1), grid

    def forward(
        self, images: Tensor, entities: int | None = None
    ) -> tuple[Tensor, list[Tensor], tuple[int, int]]:
        """Logits [B, E, 2], the 4 per-layer cross-attention maps [B, E, h*w], and the grid, for
        the first `entities` rows of the entity book (all of them by default)."""
        book = self.entity_book if entities is None else self.entity_book[:entities]
        memory, grid = self.image_tokens(images)
        batch = images.shape[0]
        queries = self.disease_embedding_layer(book).unsqueeze(1).repeat(1, batch, 1)
        output, attention = self.decoder(queries, memory)
        logits = self.classifier(self.dropout_feas(output)).transpose(0, 1)
        return logits, attention, grid
