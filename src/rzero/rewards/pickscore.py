"""PickScore (Kirstain et al. 2023): a CLIP ViT-H-14 fine-tuned on Pick-a-Pic preferences.

    score = logit_scale * cos(image_features, text_features)

as in the PickScore repository (logit_scale = exp of the checkpoint's learned scale, about
100, so scores are around 18-23 for real images).

Weights: the transformers CLIPModel `yuvalkirstain/PickScore_v1`; tokenizer and image
statistics from the processor of `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`. Both accept a
local folder instead of the hub id.
"""

from __future__ import annotations

from .clip_common import HFClipEncoder, ScaleReward, cosine

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScoreReward(ScaleReward):
    """PickScore; images (B, 3, H, W) in [-1, 1] -> (B,) float32.

    model: CLIPModel folder or hub id. processor: folder or hub id of the tokenizer
    (and preprocessor_config.json, whose image mean/std are used when present).
    """

    name = "pickscore"

    def __init__(self, model: str = PICKSCORE_MODEL, processor: str = PICKSCORE_PROCESSOR, device=None,
                 dtype="float32", asset_dir=None):
        super().__init__()
        self.clip = HFClipEncoder(self.name, model, processor, asset_dir, tokenizer_option="processor")
        self.resolution, self.mean, self.std = self.clip.image_size, self.clip.mean, self.clip.std
        self.place(device, dtype)

    def score(self, images, prompts):
        cos = cosine(self.clip.encode_image(images), self.clip.encode_text(prompts))
        return self.clip.logit_scale.float() * cos
