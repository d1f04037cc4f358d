"""CLIP score x100: how well an image matches its prompt under a CLIP model (SPEC 4).

    score = 100 * cos(image_features, text_features)

Which CLIP (SPEC 4 asks to state it): by default OpenAI's CLIP ViT-L/14 at 224 px as
ported to transformers (`openai/clip-vit-large-patch14`), the model torchmetrics'
CLIPScore uses by default. Any transformers CLIP folder / hub id, or an open_clip
architecture plus its state-dict file, can be chosen instead.

torchmetrics clamps the cosine at 0 (`max(100 cos, 0)`); we do not, so that the training
gradient does not vanish for badly matching images. For any image that matches its prompt at
all (cos > 0) the two agree.
"""

from __future__ import annotations

from .clip_common import ScaleReward, build_clip, cosine, full_precision

CLIP_SCORE_MODEL = "openai/clip-vit-large-patch14"


class ClipScoreReward(ScaleReward):
    """CLIP score x100; images (B, 3, H, W) in [-1, 1] -> (B,) float32.

    backend "transformers": model = CLIPModel folder or hub id; tokenizer defaults to the model's.
    backend "open_clip": model = architecture name (e.g. "ViT-L-14-quickgelu" for OpenAI's
    weights), path = its state-dict file (.bin / .pt / .safetensors).
    """

    name = "clip-score"

    def __init__(self, model: str = CLIP_SCORE_MODEL, backend: str = "transformers", path: str | None = None,
                 tokenizer: str | None = None, device=None, dtype="float32", asset_dir=None):
        super().__init__()
        self.clip = build_clip(self.name, backend, model, path, tokenizer, asset_dir)
        self.resolution, self.mean, self.std = self.clip.image_size, self.clip.mean, self.clip.std
        self.place(device, dtype)

    def score(self, images, prompts):
        img, txt = self.clip.encode_image(images), self.clip.encode_text(prompts)
        with full_precision(self.device):
            return 100.0 * cosine(img, txt)
