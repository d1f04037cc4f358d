"""Golden scores: 20 fixed images and prompts, scored by rzero and, where installed, by the
official package, side by side (docs/rewards.md "Checking against the official code").

The images are drawn here from a seed (colour gradients, discs and bars, at sizes that cover
square, portrait, landscape and smaller-than-224 inputs), so everyone gets the same pixels
without a download; they are written as PNG (lossless) and both sides read the same files.

Official scorers, used only when their package imports (none is a dependency of rzero):
    hps-v2, hps-v2.1  `hpsv2.score(image, prompt, cp=PATH, hps_version=...)`   (pip install hpsv2)
    imagereward       `ImageReward.load(PATH).score(prompt, image_path)`      (pip install image-reward)
    pickscore         the PickScore README's transformers code (AutoProcessor + AutoModel)
    clip-score        torchmetrics' CLIPScore (pip install torchmetrics), clamped at 0 as it is
    aesthetic         OpenAI's `clip` package + the MLP file, as simple_inference.py does
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

N_GOLDEN = 20
SIZES = [(512, 512), (512, 768), (768, 512), (1024, 768), (768, 1024), (224, 224), (160, 96), (96, 160),
         (300, 200), (427, 640), (256, 256), (1024, 1024), (640, 427), (200, 300), (333, 517), (517, 333),
         (128, 128), (720, 1280), (1280, 720), (225, 223)]  # (height, width)
PROMPTS = ["a red disc on a blue background", "a photo of a sunset over the sea", "a green bar and a yellow disc",
           "an abstract painting in warm colours", "a portrait of a cat", "two circles, one large and one small",
           "a minimalist poster with stripes", "a dark night sky with a bright moon", "a colourful pattern",
           "a landscape with mountains and a lake", "a pink square", "a close-up of an orange",
           "a gradient from purple to teal", "a city skyline at dusk", "three vertical bars",
           "a foggy morning in a forest", "a black and white photograph", "a bowl of fruit on a table",
           "a wide panorama of a desert", "a small blue ball"]


def golden_images(seed: int = 0):
    """The 20 golden images as PIL RGB images (deterministic: numpy's PCG64 and PIL's drawing)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for h, w in SIZES:
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = np.linspace(0.0, 1.0, w)[None, :, None] * 0.7 + np.linspace(0.0, 1.0, h)[:, None, None] * 0.3
        img = Image.fromarray((c0 + (c1 - c0) * ramp).round().clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            r = int(rng.integers(max(2, min(h, w) // 16), max(3, min(h, w) // 3)))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
            else:
                draw.rectangle([x - r // 3, y - r, x + r // 3, y + r], fill=fill)
        out.append(img)
    return out


def write_golden_images(folder: str | Path) -> list[Path]:
    """The golden images as 00.png ... 19.png in `folder` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(golden_images()):
        paths.append(folder / f"{i:02d}.png")
        img.save(paths[-1])
    return paths


def pil_to_tensor(img) -> torch.Tensor:
    """PIL RGB image -> (1, 3, H, W) float32 in [-1, 1], the reward contract's input."""
    x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
    return x / 127.5 - 1.0


@torch.no_grad()
def rzero_scores(reward, paths: list[Path], prompts: list[str]) -> list[float]:
    """rzero's score of each image file (one at a time: the sizes differ)."""
    from PIL import Image

    return [float(reward(pil_to_tensor(Image.open(p)), [q])[0]) for p, q in zip(paths, prompts)]


def official_scorer(name: str, options: dict, device: str) -> tuple[Callable[[Path, str], float] | None, str]:
    """(score(path, prompt) -> float, description), or (None, why not) when the package is missing."""
    try:
        if name in ("hps-v2", "hps-v2.1"):
            import hpsv2

            version = "v2.1" if name == "hps-v2.1" else "v2.0"
            cp = options.get("path")
            # hpsv2 returns the cosine; rzero reports it x100.
            return (lambda p, q: 100.0 * float(hpsv2.score(str(p), q, cp=cp, hps_version=version)[0]),
                    f"hpsv2.score (hps_version={version}) x 100")
        if name == "imagereward":
            import ImageReward as RM

            model = RM.load(options.get("path", "ImageReward-v1.0"), device=device)
            return (lambda p, q: float(model.score(q, str(p)))), "ImageReward.load(...).score"
        if name == "pickscore":
            return _pickscore_readme(options, device), "PickScore README (transformers AutoProcessor + AutoModel)"
        if name == "clip-score":
            from torchmetrics.multimodal.clip_score import CLIPScore

            from .clip_score import CLIP_SCORE_MODEL

            metric = CLIPScore(model_name_or_path=options.get("model", CLIP_SCORE_MODEL)).to(device)
            return (lambda p, q: float(metric(_uint8_chw(p).to(device), q))), "torchmetrics CLIPScore"
        if name == "aesthetic":
            return _aesthetic_official(options, device), "OpenAI clip ViT-L/14 + MLP (simple_inference.py)"
    except ImportError as e:
        return None, f"official package not installed ({e})"
    return None, f"no official scorer known for '{name}'"


def _uint8_chw(path: Path) -> torch.Tensor:
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1).contiguous()


def _pickscore_readme(options: dict, device: str):
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    from .pickscore import PICKSCORE_MODEL, PICKSCORE_PROCESSOR

    processor = AutoProcessor.from_pretrained(options.get("processor", PICKSCORE_PROCESSOR))
    model = AutoModel.from_pretrained(options.get("model", PICKSCORE_MODEL)).eval().to(device)

    def score(path: Path, prompt: str) -> float:
        image = processor(images=[Image.open(path)], return_tensors="pt").to(device)
        text = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt").to(device)
        with torch.no_grad():
            img = _features(model.get_image_features(**image))
            txt = _features(model.get_text_features(**text))
            img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
            return float(model.logit_scale.exp() * (txt @ img.T)[0, 0])

    return score


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _aesthetic_official(options: dict, device: str):
    import clip  # OpenAI's package (pip install git+https://github.com/openai/CLIP)
    from PIL import Image

    from .aesthetic import AESTHETIC_HEAD_FILES, AESTHETIC_HEAD_HUB_ID, AestheticHead
    from .clip_common import load_state_dict_file, resolve_file

    model, preprocess = clip.load("ViT-L/14", device=device)
    head_file = resolve_file("aesthetic", options.get("head"), AESTHETIC_HEAD_FILES, AESTHETIC_HEAD_HUB_ID)
    head = AestheticHead()
    head.load_state_dict(load_state_dict_file(head_file))
    head = head.to(device).eval()

    def score(path: Path, prompt: str) -> float:
        with torch.no_grad():
            e = model.encode_image(preprocess(Image.open(path)).unsqueeze(0).to(device)).float()
            return float(head(e / e.norm(dim=-1, keepdim=True)))

    return score


def compare(reward_name: str, options: dict, out_dir: str | Path, device: str = "cpu",
            drift_dtype: str | None = None) -> list[dict]:
    """Score the golden set with rzero (fp32) and, if installed, the official package: one row per
    image. drift_dtype (e.g. "bfloat16"): also score with the reward in that dtype (column
    "rzero_lowp"), the drift a training run in that dtype sees."""
    from . import make_reward

    paths = write_golden_images(out_dir)
    options = {k: v for k, v in options.items() if k not in ("device", "dtype")}
    ours = rzero_scores(make_reward(reward_name, device=device, **options), paths, PROMPTS)
    lowp = (rzero_scores(make_reward(reward_name, device=device, dtype=drift_dtype, **options), paths, PROMPTS)
            if drift_dtype else [None] * len(paths))
    official, how = official_scorer(reward_name, options, device)
    rows = []
    for i, (p, q, s, s_low) in enumerate(zip(paths, PROMPTS, ours, lowp)):
        ref = official(p, q) if official is not None else None
        h, w = SIZES[i]
        rows.append({"image": p.name, "size": f"{w}x{h}", "prompt": q, "rzero": s, "official": ref,
                     "diff": None if ref is None else s - ref, "rzero_lowp": s_low, "official_code": how})
    return rows
