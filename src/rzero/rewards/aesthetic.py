"""LAION aesthetic predictor v2 ("improved aesthetic predictor", C. Schuhmann): a linear MLP
over L2-normalized CLIP ViT-L/14 image embeddings, trained on SAC + LAION-Logos + AVA ratings.

    score = MLP(e / ||e||),   e = CLIP ViT-L/14 image embedding (768-d)

The score is on the rating scale of its training data, 1-10 (real photos about 5-6.5;
R0's table: 5.8-6.3). Prompt-free.

Weights: the head is `sac+logos+ava1-l14-linearMSE.pth` from the GitHub repository
christophschuhmann/improved-aesthetic-predictor, a torch state dict with keys
`layers.{0,2,4,6,7}.{weight,bias}` (Linear 768-1024-128-64-16-1; the dropouts in between
hold no weights, and there are no activations). The same file is on the hub as
`trl-lib/ddpo-aesthetic-predictor` / `aesthetic-model.pth` (the default hub source).
The CLIP is OpenAI's ViT-L/14 (`openai/clip-vit-large-patch14` in transformers, or open_clip
"ViT-L-14-quickgelu" with its state-dict file).
"""

from __future__ import annotations

import torch

from ..utils.io import load_checked
from .clip_common import ScaleReward, build_clip, full_precision, load_state_dict_file, resolve_file

AESTHETIC_HEAD_FILES = ("aesthetic-model.pth", "sac+logos+ava1-l14-linearMSE.pth")
AESTHETIC_HEAD_HUB_ID = "trl-lib/ddpo-aesthetic-predictor"
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"


class AestheticHead(torch.nn.Module):
    """The released MLP; `layers` indices match the checkpoint (dropouts at 1, 3, 5)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(dim, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds).squeeze(-1)  # (B, D) -> (B,)


class AestheticReward(ScaleReward):
    """LAION aesthetic v2; images (B, 3, H, W) in [-1, 1] -> (B,) float32 (about 1-10).

    head: the MLP file, a folder holding it, or a hub id. model / backend / path / tokenizer:
    the CLIP, as for the `clip-score` reward (its text tower is loaded but never used).
    """

    name = "aesthetic"
    uses_prompt = False
    fp32_modules = ("head",)  # the official script runs the MLP in float32

    def __init__(self, head: str | None = None, model: str = AESTHETIC_CLIP, backend: str = "transformers",
                 path: str | None = None, tokenizer: str | None = None, device=None, dtype="float32",
                 asset_dir=None):
        super().__init__()
        self.clip = build_clip(self.name, backend, model, path, tokenizer, asset_dir)
        self.resolution, self.mean, self.std = self.clip.image_size, self.clip.mean, self.clip.std
        head_file = resolve_file(self.name, head, AESTHETIC_HEAD_FILES, AESTHETIC_HEAD_HUB_ID, asset_dir,
                                 option="head")
        sd = load_state_dict_file(head_file)
        self.head = AestheticHead(int(sd["layers.0.weight"].shape[1]) if "layers.0.weight" in sd else 768)
        load_checked(self.head, sd, head_file)
        self.place(device, dtype)

    def score(self, images, prompts):
        e = self.clip.encode_image(images)
        with full_precision(self.device):
            e = e.float()
            e = e / e.norm(dim=-1, keepdim=True)  # the head was trained on unit-norm embeddings
            return self.head(e)
