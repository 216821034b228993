"""MAVL's network with the official module names, so that checkpoint_full_40.pth loads strictly.

Follows Zero-shot_grounding/models/model_MAVL.py (`MAVL.__init__`, `_get_basemodel`,
`image_encoder`, `forward`) with the grounding config (rsna_mavl.yaml: d_model 256, base_model
resnet50, decoder cross, N 4, H 4, self_attention True, attribute_set_size 2). The text side is
not part of it: the frozen Bio_ClinicalBERT CLS vectors of the 9 concepts of every entity arrive
as `concept_book` [E * 9, 768], a non-persistent buffer (the official code keeps them as a plain
attribute), so the state_dict holds exactly the official keys.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from xbench_blocks.fusion import PreNormDecoder

D_MODEL = 256
LAYERS = 4
HEADS = 4
FEEDFORWARD = 1024
TEXT_DIM = 768
RES_DIM = 1024  # ResNet-50 layer3 channels: resnet.fc.in_features / 2
CONCEPTS = 9  # the description and 8 visual aspects
GRID = 224 // 16  # the attention pool's fixed grid


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling (MAVL's `AttentionPool2d(14, 1024, 8, 256)`).

    Its global embedding serves only MAVL's 'text' scoring mode and training; the grounding and
    the 'feature' score do not use it. It is kept so that the checkpoint loads strictly.
    """

    def __init__(self, spatial: int, embed: int, heads: int, output: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spatial**2 + 1, embed) / embed**0.5)
        self.k_proj = nn.Linear(embed, embed)
        self.q_proj = nn.Linear(embed, embed)
        self.v_proj = nn.Linear(embed, embed)
        self.c_proj = nn.Linear(embed, output)
        self.num_heads = heads

    def forward(self, x: Tensor) -> Tensor:
        import torch.nn.functional as F

        x = x.flatten(2).permute(2, 0, 1)  # N C H W -> (HW) N C
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :].to(x.dtype)
        x, _ = F.multi_head_attention_forward(
            query=x,
            key=x,
            value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True,
            training=self.training,
            need_weights=False,
        )
        return x[0]


class MAVLNetwork(nn.Module):
    """ResNet-50 to layer3, 1x1-conv projection, 9 concept queries per entity, 4-layer decoder
    with self-attention over all of them, classifier on each entity's 9 outputs concatenated."""

    concept_book: Tensor  # a buffer, [E * 9, TEXT_DIM]

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        self.disease_embedding_layer = nn.Linear(TEXT_DIM, D_MODEL)
        # children()[:-3] drops layer4, avgpool and fc: keys backbone.{0,1,4,5,6}
        resnet = torchvision.models.resnet50(weights=None)
        self.backbone = nn.Sequential(*list(resnet.children())[:-3])
        self.pool = AttentionPool2d(GRID, RES_DIM, 8, D_MODEL)
        self.res_l1 = nn.Sequential(nn.Conv2d(RES_DIM, RES_DIM, kernel_size=1), nn.PReLU())
        self.res_l2 = nn.Conv2d(RES_DIM, D_MODEL, kernel_size=1)
        # training-only location loss; kept for the strict load
        self.location_emb = nn.Conv1d(D_MODEL, TEXT_DIM, kernel_size=CONCEPTS, stride=CONCEPTS)
        # MAVL creates norm1 and self_attn after linear2 (inside `if self_attention:`)
        self.decoder = PreNormDecoder(
            D_MODEL, HEADS, FEEDFORWARD, LAYERS, dropout=0.1, self_attn_late=True
        )
        self.dropout_feas = nn.Dropout2d(0.1)  # no parameters; see forward
        self.classifier = nn.Linear(D_MODEL * CONCEPTS, 2)
        self.register_buffer("concept_book", torch.zeros(0, TEXT_DIM), persistent=False)

    def image_tokens(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """[B, 3, H, W] -> decoder memory [h*w, B, 256] and the grid (h, w)."""
        features = self.backbone(images)  # B, 1024, h, w
        x = self.res_l2(self.res_l1(features))  # B, 256, h, w
        b, d, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(b, h * w, d).permute(1, 0, 2), (h, w)

    def forward(
        self, images: Tensor, entities: int | None = None
    ) -> tuple[Tensor, list[Tensor], tuple[int, int]]:
        """Logits [B, E, 2], the 4 per-layer cross-attention maps [B, E * 9, h*w] (queries ordered
        entity-major: entity 0's 9 concepts, then entity 1's, ...), and the grid, for the first
        `entities` entities of the concept book (all of them by default)."""
        book = self.concept_book if entities is None else self.concept_book[: entities * CONCEPTS]
        count = book.shape[0] // CONCEPTS
        memory, grid = self.image_tokens(images)
        batch = images.shape[0]
        queries = self.disease_embedding_layer(book).unsqueeze(1).repeat(1, batch, 1)
        output, attention = self.decoder(queries, memory)  # [E*9, B, 256]
        # official: out.permute(1, 2, 0) -> dropout_feas -> permute(0, 2, 1) -> view(B, E, -1).
        # dropout_feas (Dropout2d) is the identity in eval mode and is not called: on this 3-D
        # input torch warns about its changing semantics.
        output = output.permute(1, 0, 2)  # B, E*9, 256
        logits = self.classifier(output.reshape(batch, count, CONCEPTS * D_MODEL))
        return logits, attention, grid
