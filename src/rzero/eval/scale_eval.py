"""`rzero eval` for SD-class models: the pinned real-scale protocol of SPEC 4.

Image sources: a trained snapshot of an sd15/sd3 run (`load_generator`, sampled at its
inference eta) or a pretrained base model (`model=base`: DDIM + CFG with EvalConfig's steps
and cfg, `scale.eta`).

Protocol:
    one image per prompt; image i of a prompt file gets start noise from image_seed(seed, i)
        and its own re-noising generator from image_seed(seed + 1, i), so an image depends on
        (seed, prompt index) only: not on the batch size, the device count or the other files;
    every configured reward (registry name + options): its mean on each prompt file. HPS and
        CLIP score are reported x100 as the rewards return them (docs/rewards.md); which CLIP
        is written under "reward_notes";
    HPS v2 benchmark: one file per style (anime, concept-art, paintings, photo), each style's
        means and the unweighted mean over styles (the HPS v2 paper's "average");
    COCO FID: one image per caption against the first N reference images of a folder,
        FID Inception-v3 pool features after a clean-fid-style resize (rzero/eval/inception.py);
    nfe (network evaluations per image; CFG counts twice) and ms_per_image (generation only).

Images are scored batch by batch and dropped: 5k images at 512 px would not fit in memory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..config.schema import EvalConfig, ScaleEvalConfig
from ..utils.io import AssetError
from ..utils.seeding import per_image_draws
from .metrics import frechet_distance

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
HPS_STYLES = ("anime", "concept-art", "paintings", "photo")

# (prompts, prompt indices) -> (B, 3, H, W) images in [-1, 1]
GenerateFn = Callable[[list[str], list[int]], torch.Tensor]


@dataclass
class ScaleSource:
    name: str
    backbone: str
    nfe: int
    device: torch.device
    generate: GenerateFn


@dataclass
class ScaleInputs:
    """The checked inputs of one evaluation: prompt sets by name and the COCO reference files."""

    hps: dict[str, list[str]]  # style -> prompts
    files: dict[str, list[str]]  # name -> prompts
    coco: list[str]  # captions ([] = no FID)
    coco_images: list[Path]  # one reference image per caption


# ---------------------------------------------------------------- inputs (checked before any model loads)


def _read(path: Path, label: str, limit: int) -> list[str]:
    from ..data.prompts import read_prompts

    if path.suffix == ".json":  # the HPSv2 package ships its benchmark prompts as JSON lists
        import json

        if not path.is_file():
            raise ValueError(f"{label} '{path}' not found; give a UTF-8 text file with one prompt per line")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise ValueError(f"{label} '{path}' is not a JSON list of prompts; write one prompt per line in a .txt")
        prompts = [p.strip() for p in data if p.strip()]
        if not prompts:
            raise ValueError(f"{label} '{path}' has no prompts; write one prompt per line")
    else:
        prompts = read_prompts(path, label)
    return prompts[:limit] if limit else prompts


def hps_style_files(folder: str | Path) -> dict[str, Path]:
    """Style name -> prompt file of an HPS v2 benchmark folder (a single file is one 'style')."""
    p = Path(folder).expanduser()
    if p.is_file():
        return {p.stem: p}
    if not p.is_dir():
        raise ValueError(f"scale.hps_prompts '{folder}' not found; give the folder of the HPS v2 benchmark "
                         f"prompt files ({', '.join(s + '.txt' for s in HPS_STYLES)})")
    files = sorted(f for f in p.iterdir() if f.suffix in (".txt", ".json") and f.is_file())
    if not files:
        raise ValueError(f"scale.hps_prompts '{folder}' holds no .txt or .json prompt files; write one file per "
                         f"style ({', '.join(s + '.txt' for s in HPS_STYLES)}), one prompt per line")
    return {f.stem: f for f in files}


def reference_images(folder: str | Path, n: int) -> list[Path]:
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise ValueError(f"scale.coco_images '{folder}' is not a folder; give the folder of COCO-2014 val reference "
                         "images (one per caption)")
    images = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if len(images) < n:
        raise ValueError(f"scale.coco_images '{folder}' holds {len(images)} images but there are {n} captions; "
                         "give at least one reference image per caption (or fewer captions)")
    return images[:n]


def check_inputs(sc: ScaleEvalConfig) -> ScaleInputs:
    """Read and check every prompt file and the FID inputs; one-line ValueError/AssetError on a problem."""
    from ..rewards import REWARDS
    from .inception import FID_WEIGHTS_FILE, _how

    if not (sc.hps_prompts or sc.prompt_files or sc.coco_captions):
        raise ValueError("nothing to evaluate: give scale.hps_prompts=FOLDER, scale.prompt_files=[FILE,...] "
                         "or scale.coco_captions=FILE with scale.coco_images=FOLDER")
    unknown = [r for r in sc.rewards if r not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward '{unknown[0]}' in scale.rewards; choose from {', '.join(sorted(REWARDS))}")
    hps = {s: _read(f, f"HPS prompt file ({s})", sc.max_prompts)
           for s, f in hps_style_files(sc.hps_prompts).items()} if sc.hps_prompts else {}
    if hps and not sc.rewards:
        raise ValueError("scale.hps_prompts needs at least one reward to report: add scale.rewards=[hps-v2.1]")
    files: dict[str, list[str]] = {}
    for f in sc.prompt_files:
        name = Path(f).stem if Path(f).stem not in files else str(f)
        files[name] = _read(Path(f).expanduser(), "scale.prompt_files entry", sc.max_prompts)
    if files and not sc.rewards:
        raise ValueError("scale.prompt_files needs at least one reward to report: add scale.rewards=[...]")
    coco, coco_images = [], []
    if sc.coco_captions:
        coco = _read(Path(sc.coco_captions).expanduser(), "scale.coco_captions", sc.max_prompts)
        coco_images = reference_images(sc.coco_images, len(coco))
        if len(coco) < 2:
            raise ValueError("FID needs at least 2 captions (a covariance); COCO-2014 val 5k has 5000")
        weights = Path(sc.inception).expanduser() if sc.inception else None
        if weights is not None and weights.is_dir():
            weights = weights / FID_WEIGHTS_FILE
        if weights is None or not weights.is_file():
            where = f" '{weights}' not found" if weights is not None else " not given"
            raise AssetError(f"FID Inception weights{where}; {_how()}")
    return ScaleInputs(hps, files, coco, coco_images)


# ---------------------------------------------------------------- image sources


def _device(name: str) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def base_source(cfg: EvalConfig) -> ScaleSource:
    """The pretrained model itself: multi-step DDIM with CFG (the usual SD baseline)."""
    from ..backbones import make_backbone
    from ..generator.load import backbone_kwargs

    sc = cfg.scale
    device = _device(sc.device)
    backbone = make_backbone(sc.backbone, **backbone_kwargs(sc.backbone, sc.backbone_path, sc.backbone_dtype,
                                                            False, None, device)).eval()

    def generate(prompts, idx):
        noise, gens = per_image_draws(backbone.latent_shape, cfg.seed, idx)
        return backbone.sample(prompts, noise, steps=cfg.steps, cfg=cfg.cfg, eta=sc.eta, generator=gens)

    nfe = cfg.steps * (2 if cfg.cfg != 1.0 else 1)
    name = f"{sc.backbone} base ({cfg.steps} DDIM steps, CFG {cfg.cfg:g}, eta {sc.eta:g})"
    return ScaleSource(name, sc.backbone, nfe, device, generate)


def snapshot_source(checkpoint, cfg: EvalConfig) -> ScaleSource:
    """A trained few-step generator of an sd15/sd3 run, at its inference eta (no CFG: 1 NFE a step)."""
    from ..generator import load_generator

    device = _device(cfg.scale.device)
    gen, meta = load_generator(checkpoint, device=device)
    eta = float(meta.get("inference_eta", 0.0))

    def generate(prompts, idx):
        noise, gens = per_image_draws(gen.backbone.latent_shape, cfg.seed, idx, device)
        return gen.sample(prompts, noise, eta, generator=gens)

    name = f"{meta.get('method', 'generator').upper()} {meta.get('backbone')} ({gen.steps} steps)"
    return ScaleSource(name, meta.get("backbone", "?"), gen.steps, device, generate)


# ---------------------------------------------------------------- the protocol


def build_rewards(sc: ScaleEvalConfig, device) -> dict:
    from ..rewards import make_reward

    return {name: make_reward(name, **sc.reward_options.get(name, {})).to(device).eval() for name in sc.rewards}


def reward_notes(sc: ScaleEvalConfig) -> dict[str, str]:
    """What each reported number is (scale and model), so tables can be compared with papers."""
    from ..rewards.clip_score import CLIP_SCORE_MODEL

    notes = {}
    for name in sc.rewards:
        opts = sc.reward_options.get(name, {})
        if name == "clip-score":
            model = opts.get("model", CLIP_SCORE_MODEL)
            notes[name] = (f"100 x cosine; CLIP {model} ({opts.get('backend', 'transformers')}"
                           + (f", weights {opts['path']}" if opts.get("path") else "") + ")")
        elif name.startswith("hps-"):
            notes[name] = f"100 x cosine; {name} on open_clip {opts.get('arch', 'ViT-H-14')}"
        elif name == "pickscore":
            notes[name] = "logit_scale x cosine (PickScore v1)"
        elif name == "imagereward":
            notes[name] = "ImageReward v1.0, normalized head output"
        elif name == "aesthetic":
            notes[name] = "LAION aesthetic predictor v2 (1-10)"
    return notes


@torch.no_grad()
def run_prompt_set(source: ScaleSource, prompts: list[str], seed_note: str, batch_size: int, rewards: dict,
                   inception=None) -> tuple[dict[str, float], torch.Tensor | None, float]:
    """Generate one image per prompt in batches; returns (reward means, Inception features, seconds)."""
    from .inception import inception_features, to_uint8

    sums = {name: 0.0 for name in rewards}
    feats, seconds = [], 0.0
    for s in tqdm(range(0, len(prompts), batch_size), desc=f"eval: {seed_note}", unit="batch", dynamic_ncols=True):
        idx = list(range(s, min(s + batch_size, len(prompts))))
        batch = [prompts[i] for i in idx]
        if source.device.type == "cuda":
            torch.cuda.synchronize(source.device)
        t0 = time.perf_counter()
        images = source.generate(batch, idx)
        if source.device.type == "cuda":
            torch.cuda.synchronize(source.device)
        seconds += time.perf_counter() - t0
        for name, r in rewards.items():
            sums[name] += float(r(images.float(), batch).double().sum())
        if inception is not None:
            feats.append(inception_features(inception, to_uint8(images)))
    means = {name: v / len(prompts) for name, v in sums.items()}
    return means, (torch.cat(feats) if feats else None), seconds


def reference_features(inception, paths: list[Path], batch_size: int = 50) -> torch.Tensor:
    """FID features of the reference images, read as RGB uint8 (what clean-fid reads)."""
    import numpy as np
    from PIL import Image

    from .inception import inception_features

    feats = []
    for s in tqdm(range(0, len(paths), batch_size), desc="eval: COCO reference", unit="batch", dynamic_ncols=True):
        arrays = []
        for p in paths[s:s + batch_size]:
            with Image.open(p) as im:
                arrays.append(np.asarray(im.convert("RGB")))
        if len({a.shape for a in arrays}) == 1:
            feats.append(inception_features(inception, np.stack(arrays), batch_size))
        else:  # images of different sizes are resized one at a time (clean_resize takes a stack)
            feats += [inception_features(inception, a[None]) for a in arrays]
    return torch.cat(feats)


def evaluate_scale(source: ScaleSource, cfg: EvalConfig, rewards: dict | None = None, inception=None,
                   inputs: ScaleInputs | None = None) -> dict:
    """Run SPEC 4's protocol; `rewards` (name -> Reward), `inception` and the already checked
    `inputs` (check_inputs) may be passed in (tests, reuse); otherwise they are built here."""
    sc = cfg.scale
    inputs = check_inputs(sc) if inputs is None else inputs
    rewards = build_rewards(sc, source.device) if rewards is None else rewards
    out: dict = {"model": source.name, "backbone": source.backbone, "seed": cfg.seed,
                 "reward_notes": reward_notes(sc)}
    n_images, seconds = 0, 0.0

    if inputs.hps:
        styles = {}
        for style, prompts in inputs.hps.items():
            styles[style], _, sec = run_prompt_set(source, prompts, f"HPS {style}", sc.batch_size, rewards)
            n_images, seconds = n_images + len(prompts), seconds + sec
        # The benchmark's headline number: the plain mean of the per-style means.
        styles["mean"] = {r: sum(v[r] for v in styles.values()) / len(styles) for r in rewards}
        missing = [s for s in HPS_STYLES if s not in inputs.hps]
        if missing:
            out["hps_benchmark_missing_styles"] = missing
        out["hps_benchmark"] = styles

    if inputs.files:
        out["prompt_files"] = {}
        for name, prompts in inputs.files.items():
            out["prompt_files"][name], _, sec = run_prompt_set(source, prompts, name, sc.batch_size, rewards)
            n_images, seconds = n_images + len(prompts), seconds + sec

    if inputs.coco:
        from .inception import FID_MODE, load_fid_inception

        inception = load_fid_inception(sc.inception, source.device) if inception is None else inception
        means, feats, sec = run_prompt_set(source, inputs.coco, "COCO", sc.batch_size, rewards, inception)
        n_images, seconds = n_images + len(inputs.coco), seconds + sec
        ref = reference_features(inception, inputs.coco_images)
        out["coco"] = {"fid": frechet_distance(feats, ref), "num_images": len(inputs.coco), "rewards": means,
                       "inception": str(sc.inception), "fid_mode": FID_MODE,
                       "resize": "uint8 (PNG values) -> per-channel float PIL bicubic to 299x299, no crop (clean-fid)"}

    out["nfe"] = source.nfe
    out["num_images"] = n_images
    out["ms_per_image"] = 1000.0 * seconds / n_images if n_images else math.nan
    return out


def scale_markdown(m: dict) -> str:
    """A Markdown table: one row per prompt set, one column per reward (+ FID)."""
    rows: list[tuple[str, dict]] = [(f"HPS {k}", v) for k, v in m.get("hps_benchmark", {}).items()]
    rows += [(k, v) for k, v in m.get("prompt_files", {}).items()]
    if "coco" in m:
        rows.append(("COCO", {**m["coco"]["rewards"], "FID": m["coco"]["fid"]}))
    cols = list(dict.fromkeys(c for _, v in rows for c in v))
    lines = [f"# Evaluation of {m['model']}", "",
             f"NFE {m['nfe']}, {m['ms_per_image']:.1f} ms per image, {m['num_images']} images, seed {m['seed']}.", "",
             "| prompts | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, v in rows:
        lines.append(f"| {name} | " + " | ".join(f"{v[c]:.3f}" if c in v else "" for c in cols) + " |")
    notes = [f"- {k}: {v}" for k, v in m.get("reward_notes", {}).items()]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
