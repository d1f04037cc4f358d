"""Networks of the built-in world: three rewards, two held-out evaluators, the teacher config.

All image inputs are (B, 3, 32, 32) in [-1, 1]; text inputs are the frozen token states of
`text.WorldTextEncoder`: (B, 32, 384) plus a (B, 32) bool mask. The held-out evaluators use
their own architectures (BatchNorm + max-pool inspector, pooled feature net) so that they do
not share the rewards' blind spots.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .scene import BACKGROUNDS, COLOURS, N_SLOTS, SHAPES, SIZES
from .text import HIDDEN

N_DEGRADATIONS = 8  # see degrade.py: index 0 is "clean"


def _conv_gn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class ConvTrunk(nn.Module):
    """32x32 -> (B, widths[-1], 8, 8) with GroupNorm and strided convs."""

    def __init__(self, widths=(32, 64, 96)):
        super().__init__()
        a, b, c = widths
        self.net = nn.Sequential(_conv_gn(3, a), _conv_gn(a, a), _conv_gn(a, b, 2), _conv_gn(b, b),
                                 _conv_gn(b, c, 2), _conv_gn(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TextTower(nn.Module):
    """Project frozen token states and contextualise them with one small transformer layer."""

    def __init__(self, dim: int = 128, layers: int = 1):
        super().__init__()
        self.proj = nn.Linear(HIDDEN, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.proj(states), src_key_padding_mask=~mask)  # (B, T, dim)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.float()[..., None]
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


# The coarse world-clip's input: means of 4x4-pixel cells (an 8x8 image, one cell per 4 px).
COARSE_POOL = 4


class WorldClip(nn.Module):
    """Contrastive image-text model (the CLIP-score analogue): cosine of two embeddings.

    `input_pool` > 1 (the `world-clip-coarse` reward): the network sees only the means of
    input_pool x input_pool pixel cells, so no pattern finer than a cell can change its score;
    an image must move colour between cells, i.e. where objects are, to raise it. Its trunk
    keeps the pooled resolution (8x8 at 4) instead of striding down.
    """

    def __init__(self, dim: int = 128, input_pool: int = 1):
        super().__init__()
        self.input_pool = input_pool
        if input_pool > 1:
            self.trunk = nn.Sequential(_conv_gn(3, 64), _conv_gn(64, 96), _conv_gn(96, 96), _conv_gn(96, 96))
        else:
            self.trunk = ConvTrunk((32, 64, 96))
        self.image_head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(96 * 16, 256), nn.SiLU(),
                                        nn.Linear(256, dim))
        self.text = TextTower(dim)
        self.text_head = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.7))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.input_pool > 1:
            images = F.avg_pool2d(images, self.input_pool)
        return F.normalize(self.image_head(self.trunk(images)), dim=-1)

    def embed_text(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(_masked_mean(self.text(states, mask), mask)), dim=-1)

    def forward(self, images, states, mask) -> torch.Tensor:
        """(B,) cosine similarity of matching rows."""
        return (self.embed_images(images) * self.embed_text(states, mask)).sum(-1)


class WorldJudge(nn.Module):
    """Compositional judge (the ImageReward/HPS analogue).

    Text tokens attend to an 8x8 grid of image features; the pooled result predicts the
    fraction of the prompt's attributes that the image meets (a logit; sigmoid -> [0, 1]).
    """

    def __init__(self, dim: int = 128, layers: int = 2):
        super().__init__()
        self.trunk = ConvTrunk((32, 64, 96))
        self.image_proj = nn.Linear(96, dim)
        self.pos = nn.Parameter(torch.randn(1, 64, dim) * 0.02)
        self.text = TextTower(dim)
        layer = nn.TransformerDecoderLayer(dim, 4, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))

    def image_memory(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.trunk(images).flatten(2).transpose(1, 2)  # (B, 64, 96)
        return self.image_proj(feats) + self.pos  # (B, 64, dim)

    def score_memory(self, memory: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.decoder(self.text(states, mask), memory, tgt_key_padding_mask=~mask)  # (B, T, dim)
        return self.head(_masked_mean(q, mask)).squeeze(-1)  # (B,) logit

    def forward(self, images, states, mask) -> torch.Tensor:
        return self.score_memory(self.image_memory(images), states, mask)


class WorldQuality(nn.Module):
    """Prompt-free image quality (the aesthetic analogue): logit of "clean render"."""

    def __init__(self):
        super().__init__()
        self.trunk = ConvTrunk((32, 48, 64))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64), nn.SiLU(),
                                  nn.Linear(64, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images)).squeeze(-1)


# Per-slot head layout of the inspector: presence, shape, colour, size.
SLOT_HEADS = (1, len(SHAPES), len(COLOURS), len(SIZES))
SLOT_OUT = sum(SLOT_HEADS)


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU())


class WorldInspector(nn.Module):
    """Held-out attribute inspector (the GenEval analogue); never used as a reward.

    Outputs a dict of logits: presence (B, 3), shape (B, 3, 5), colour (B, 3, 8),
    size (B, 3, 2), background (B, 3). Slots are left, center, right.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(_conv_bn(3, 48), _conv_bn(48, 48), nn.MaxPool2d(2), _conv_bn(48, 96),
                                      _conv_bn(96, 96), nn.MaxPool2d(2), _conv_bn(96, 128), nn.MaxPool2d(2),
                                      nn.Flatten(), nn.Linear(128 * 16, 384), nn.ReLU())
        self.slots = nn.Linear(384, N_SLOTS * SLOT_OUT)
        self.background = nn.Linear(384, len(BACKGROUNDS))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(images)
        return split_attribute_logits(torch.cat([self.slots(h), self.background(h)], 1))


def split_attribute_logits(flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, 3 * SLOT_OUT + n_backgrounds) -> the inspector's logit dict (see WorldInspector)."""
    s = flat[:, : N_SLOTS * SLOT_OUT].reshape(-1, N_SLOTS, SLOT_OUT)
    presence, shape, colour, size = torch.split(s, SLOT_HEADS, dim=-1)
    return {"presence": presence.squeeze(-1), "shape": shape, "colour": colour, "size": size,
            "background": flat[:, N_SLOTS * SLOT_OUT:]}


class WorldFeatureNet(nn.Module):
    """Feature extractor for world-FID: 64-d features trained on attributes and degradations.

    Training it to also name the degradation makes its features sensitive to image quality,
    not only to content, which is what a FID feature space needs.
    """

    dim = 64

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(3, 32), nn.MaxPool2d(2), _conv_bn(32, 64), nn.MaxPool2d(2),
                                  _conv_bn(64, 96), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                  nn.Linear(96 * 16, self.dim))
        self.attr_head = nn.Linear(self.dim, N_SLOTS * SLOT_OUT + len(BACKGROUNDS))
        self.degradation_head = nn.Linear(self.dim, N_DEGRADATIONS)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)  # (B, 64)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.relu(self.features(images))
        return self.attr_head(f), self.degradation_head(f)


class WorldSharpness(nn.Module):
    """R0+ high-resolution guidance classifier: logit of p(sharp | x_t, t) (SPEC 1.4).

    Trained to tell full-resolution renders from down-then-up-sampled ones after both are
    noised to the same t; `t` (B,) VP timesteps enter as an extra constant input channel.
    """

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(4, 32, 3, 1, 1)
        self.trunk = nn.Sequential(nn.SiLU(), _conv_gn(32, 48, 2), _conv_gn(48, 64, 2), nn.AdaptiveAvgPool2d(1),
                                   nn.Flatten(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tc = (t.float() / 1000.0).view(-1, 1, 1, 1).expand(-1, 1, *x_t.shape[-2:])
        return self.trunk(self.stem(torch.cat([x_t, tc], 1))).squeeze(-1)


def teacher_unet_config() -> dict:
    """UNet2DConditionModel config of the world teacher (4.6 M params, computes at 16x16x12).

    Images are 32x32 RGB folded by a 2x2 pixel-unshuffle into 16x16x12 "latents" (exact
    and invertible, our VAE stand-in). Attention only at 8x8 and 4x4: at 16x16 it would
    dominate CPU time (../shared/ENVIRONMENT.md).
    """
    return dict(
        sample_size=16, in_channels=12, out_channels=12, layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN, attention_head_dim=4, norm_num_groups=16,
    )
