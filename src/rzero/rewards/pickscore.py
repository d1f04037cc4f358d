"""PickScore (Kirstain et al. 2023): a CLIP ViT-H-14 fine-tuned on Pick-a-Pic preferences.

    score = logit_scale * cos(image_features, text_features)

as in the PickScore repository (logit_scale = exp of the checkpoint's learned scale, about
100, so scores are around 18-23 for real images).

Weights: the transformers CLIPModel `yuvalkirstain/PickScore_v1`; tokenizer and image
statistics from the processor of `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`. Both accept a
local folder instead of the hub id.

Preprocessing is the processor of the transformers version the PickScore repository pins
(4.27.3): short side to 224 with int() truncation of the long side, center crop at offset
(d // 2), bicubic. The logit scale is read in float32 when the model loads and the score is
computed in float32 under any autocast (in bf16 the scale rounds to ~98.9: every score 1 % low).
"""

from __future__ import annotations

from .clip_common import HFClipEncoder, ScaleReward, cosine, full_precision

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScoreReward(ScaleReward):
    """PickScore; images (B, 3, H, W) in [-1, 1] -> (B,) float32.

    model: CLIPModel folder or hub id. processor: folder or hub id of the tokenizer
    (and preprocessor_config.json, whose image mean/std are used when present).
    """

    name = "pickscore"
    crop_offset = "floor"  # transformers 4.27's center_crop

    def __init__(self, model: str = PICKSCORE_MODEL, processor: str = PICKSCORE_PROCESSOR, device=None,
                 dtype="float32", asset_dir=None):
        super().__init__()
        self.clip = HFClipEncoder(self.name, model, processor, asset_dir, tokenizer_option="processor")
        self.resolution, self.mean, self.std = self.clip.image_size, self.clip.mean, self.clip.std
        self.place(device, dtype)

    def score(self, images, prompts):
        img, txt = self.clip.encode_image(images), self.clip.encode_text(prompts)
        with full_precision(self.device):
            return self.clip.logit_scale.to(img.device) * cosine(img, txt)
