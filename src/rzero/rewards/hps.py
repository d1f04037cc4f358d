"""HPS v2 / v2.1: Human Preference Score (Wu et al. 2023), an open_clip ViT-H-14 fine-tuned on
human preference pairs (SPEC 4: HPS v2.1 is the headline metric).

    score = 100 * cos(image_features, text_features)

The HPS repository scores with `image_features @ text_features.T` on the *normalized*
features, without the logit scale, i.e. the cosine (about 0.2-0.35 for real images); papers,
and SPEC 4, report it x100 (R0's table: 30-35). We return that x100 value, so training logs
and `rzero eval` print numbers comparable to the papers. (The logit scale of the checkpoint
is not used; with per-reward gradient normalization the scale does not matter for training.)

Preprocessing is the official `preprocess_val` (hpsv2/img_score.py builds it with open_clip's
`ResizeMaxSize`): the long side goes to 224 and the short side is padded with black, not
center-cropped. On a 512x768 image a center crop moves the cosine by ~0.08 (8 HPS points).

Weights: `HPS_v2_compressed.pt` / `HPS_v2.1_compressed.pt` from the hub repo `xswu/HPSv2`,
torch pickles holding {'state_dict': open_clip ViT-H-14 state dict}; loaded with
weights_only=True. A safetensors conversion of that state dict is accepted as well.
"""

from __future__ import annotations

from .clip_common import OpenClipEncoder, ScaleReward, cosine, full_precision, resolve_file

HPS_HUB_ID = "xswu/HPSv2"


class HPSReward(ScaleReward):
    """HPS v2.x score x100; images (B, 3, H, W) in [-1, 1] -> (B,) float32.

    path: checkpoint file, a folder holding it, or a hub id (default: xswu/HPSv2, cache only
    when offline). arch: open_clip architecture (ViT-H-14; tests pass a tiny registered one).
    """

    name = "hps-v2"
    filename = "HPS_v2_compressed.pt"
    resize = "pad"  # the official ResizeMaxSize (module docstring)

    def __init__(self, path: str | None = None, arch: str = "ViT-H-14", device=None, dtype="float32",
                 asset_dir=None):
        super().__init__()
        stem = self.filename.rsplit(".", 1)[0]
        weights = resolve_file(self.name, path, (self.filename, stem + ".safetensors"), HPS_HUB_ID, asset_dir)
        self.clip = OpenClipEncoder(arch, weights)
        self.resolution, self.mean, self.std = self.clip.image_size, self.clip.mean, self.clip.std
        self.place(device, dtype)

    def score(self, images, prompts):
        img, txt = self.clip.encode_image(images), self.clip.encode_text(prompts)
        with full_precision(self.device):
            return 100.0 * cosine(img, txt)


class HPSv21Reward(HPSReward):
    name = "hps-v2.1"
    filename = "HPS_v2.1_compressed.pt"
