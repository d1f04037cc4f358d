"""SPEC 4 evaluation of SD-class models (rzero/eval/scale_eval.py, rzero/eval/inception.py).

Offline, tiny models only: the tiny SD folders of tiny_sd.py, a pixel reward registered for
the test, and a randomly initialised FID Inception saved in the released file's key layout.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rzero.cli.main import main
from rzero.config import load_config
from rzero.config.schema import EvalConfig
from rzero.eval import scale_eval
from rzero.eval.inception import (FIDInception3, clean_resize, fid_input, inception_features, load_fid_inception,
                                  to_uint8)
from rzero.eval.metrics import frechet_distance
from rzero.rewards import REWARDS
from rzero.utils.io import AssetError
from tiny_sd import Redness, prompt_file, tiny_sd3, tiny_sd15  # noqa: F401  (pytest fixtures)


@pytest.fixture
def redness(monkeypatch):
    monkeypatch.setitem(REWARDS, "test-redness", Redness)
    return "test-redness"


class TinyFeatures(torch.nn.Module):
    """Stand-in for the Inception in protocol tests: (B, 3, 299, 299) -> (B, 6) cheap features."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A random FID Inception in the released layout: plain state dict, no num_batches_tracked."""
    torch.manual_seed(0)
    model = FIDInception3()
    for m in model.modules():  # keep activations O(1) through 90 random layers (default init fades out)
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path


@pytest.fixture
def bench(tmp_path):
    """An HPS-benchmark-shaped folder (4 styles x 2 prompts), COCO captions and reference PNGs."""
    from PIL import Image

    hps = tmp_path / "hps"
    hps.mkdir()
    for i, style in enumerate(scale_eval.HPS_STYLES):
        (hps / f"{style}.txt").write_text(f"a {style} cat\na {style} ünïcode house {i}\n", encoding="utf-8")
    (tmp_path / "coco.txt").write_text("a dog on a bench\na plate of food\na red bus\n")
    imgs = tmp_path / "coco_images"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(imgs / f"{i:012d}.png")
    return tmp_path


def base_cfg(path, kind="sd15", *extra) -> EvalConfig:
    return load_config(EvalConfig, None, ["model=base", f"scale.backbone={kind}", f"scale.backbone_path={path}",
                                          "steps=2", "cfg=2", "scale.device=cpu", *extra])


# ------------------------------------------------------------------------------ FID Inception


def test_fid_inception_loads_released_layout_2048_features_and_self_fid(inception_file):
    model = load_fid_inception(inception_file)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    # The network at a small input (fully convolutional + global pool): fast, same code path.
    x = torch.rand(3, 3, 80, 80) * 2 - 1
    feats = model(x).double()
    assert feats.shape == (3, 2048) and torch.isfinite(feats).all() and feats.std() > 1e-3
    # FID on 256 of the 2048 dims: a 2048 x 2048 eigendecomposition takes a minute on busy CPUs
    # (the full width runs in the slow test below).
    part = feats[:, :256]
    assert abs(frechet_distance(part, part)) < 1e-5 * float(part.pow(2).sum())
    assert frechet_distance(part, part + 1.0) == pytest.approx(256.0, rel=1e-6)
    state = torch.load(inception_file, weights_only=True)
    torch.testing.assert_close(model.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])


@pytest.mark.slow  # six images through the full 299 px network: ~2 min on 2 busy CPU cores
def test_fid_features_at_299_do_not_depend_on_batching(inception_file):
    model = load_fid_inception(inception_file)
    imgs = np.random.default_rng(1).integers(0, 256, (3, 40, 32, 3), dtype=np.uint8)
    feats = inception_features(model, imgs, batch_size=2)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float64 and torch.isfinite(feats).all()
    assert feats.std() > 1e-3  # the random network still separates the images
    # batching does not change features; FID of a set against itself is ~0, against other images not
    torch.testing.assert_close(inception_features(model, imgs, batch_size=3), feats, rtol=1e-4, atol=1e-5)
    assert abs(frechet_distance(feats, feats)) < 1e-5 * float(feats.pow(2).sum())
    assert frechet_distance(feats, feats + 1.0) == pytest.approx(2048.0, rel=1e-6)


def test_fid_graph_differs_from_torchvision_only_in_the_pool_branches():
    """Same weights as torchvision's blocks; only the pool branch differs, as in the TF graph:
    average pools ignore padding (so only border pixels change), Mixed_7c max-pools."""
    from torchvision.models import inception as tv

    m = FIDInception3().eval()
    x = torch.rand(1, 192, 5, 5)
    ref = tv.InceptionA(192, pool_features=32).eval()
    ref.load_state_dict(m.Mixed_5b.state_dict())
    diff = (m.Mixed_5b(x) - ref(x)).abs()
    assert diff[:, :-32].max() < 1e-6  # 1x1, 5x5 and double-3x3 branches: identical
    assert diff[:, -32:, 1:-1, 1:-1].max() < 1e-6 and diff[:, -32:].max() > 1e-4  # pool branch: border only
    x = torch.rand(1, 2048, 3, 3)
    ref = tv.InceptionE(2048).eval()
    ref.load_state_dict({k: v for k, v in m.Mixed_7c.state_dict().items()})
    out = m.Mixed_7c(x)
    assert (out[:, :-192] - ref(x)[:, :-192]).abs().max() < 1e-6
    pooled = torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1)
    torch.testing.assert_close(out[:, -192:], m.Mixed_7c.branch_pool(pooled))


def test_inception_errors_are_one_line(tmp_path):
    with pytest.raises(AssetError, match="pt_inception-2015-12-05-6726825d.pth.*scale.inception=PATH"):
        load_fid_inception(tmp_path / "nope.pth")
    with pytest.raises(AssetError, match="FID needs the Inception weights file"):
        load_fid_inception("")
    wrong = tmp_path / "wrong.pth"
    torch.save({"a": torch.zeros(1)}, wrong)
    with pytest.raises(AssetError, match="not the FID Inception state dict") as e:
        load_fid_inception(wrong)
    assert "\n" not in str(e.value)


def test_clean_resize_is_pil_bicubic_in_float():
    from PIL import Image

    imgs = np.random.default_rng(0).integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)
    out = clean_resize(imgs)
    assert out.shape == (2, 3, 299, 299) and out.min() >= 0 and out.max() <= 255
    ref = np.array(Image.fromarray(imgs[1, :, :, 2].astype(np.float32)).resize((299, 299), Image.BICUBIC))
    torch.testing.assert_close(out[1, 2], torch.from_numpy(ref).clamp(0, 255))
    flat = clean_resize(np.full((1, 10, 10, 3), 200, np.uint8))
    torch.testing.assert_close(flat, torch.full_like(flat, 200.0))
    # clean-fid's input scaling (x - 128) / 128, not pytorch-fid's x / 127.5 - 1 (tests/test_fid_sampler_fidelity.py).
    torch.testing.assert_close(fid_input(flat), torch.full_like(flat, 72 / 128))
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)).tolist()[0][0] == \
        [[0, 0, 0], [128, 128, 128], [255, 255, 255], [255, 255, 255]]


# ------------------------------------------------------------------------------ protocol


@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_images_do_not_depend_on_batch_size(tiny_sd15, tiny_sd3, kind):  # noqa: F811
    cfg = base_cfg(tiny_sd15 if kind == "sd15" else tiny_sd3, kind, "scale.eta=1", "cfg=1")
    src = scale_eval.base_source(cfg)
    prompts = ["a cat", "a dog", "a red house"]
    whole = src.generate(prompts, [0, 1, 2])
    parts = torch.cat([src.generate(prompts[:1], [0]), src.generate(prompts[1:], [1, 2])])
    torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-5)
    assert whole.shape[0] == 3 and not torch.allclose(whole[0], whole[1])
    assert src.nfe == 2  # 2 steps at cfg 1: one network call a step (CFG would count twice)


def test_protocol_reports_styles_files_coco_and_timing(tiny_sd15, bench, redness, prompt_file):  # noqa: F811
    cfg = base_cfg(tiny_sd15, "sd15", f"scale.hps_prompts={bench / 'hps'}", f"scale.prompt_files=[{prompt_file}]",
                   f"scale.coco_captions={bench / 'coco.txt'}", f"scale.coco_images={bench / 'coco_images'}",
                   f"scale.inception={bench / 'unused.pth'}", f"scale.rewards=[{redness}]", "scale.batch_size=3",
                   "steps=1", "cfg=1", "scale.max_prompts=2")
    (bench / "unused.pth").write_bytes(b"")  # must exist; the injected stand-in replaces it
    m = scale_eval.evaluate_scale(scale_eval.base_source(cfg), cfg, inception=TinyFeatures())
    assert set(m) >= {"model", "backbone", "seed", "reward_notes", "hps_benchmark", "prompt_files", "coco", "nfe",
                      "num_images", "ms_per_image"}
    assert set(m["hps_benchmark"]) == {*scale_eval.HPS_STYLES, "mean"}
    styles = [m["hps_benchmark"][s][redness] for s in scale_eval.HPS_STYLES]
    assert m["hps_benchmark"]["mean"][redness] == pytest.approx(sum(styles) / 4)
    assert set(m["prompt_files"]) == {"prompts"} and set(m["prompt_files"]["prompts"]) == {redness}
    assert m["coco"]["num_images"] == 2 and np.isfinite(m["coco"]["fid"]) and m["coco"]["fid"] > 0
    assert m["coco"]["fid_mode"] == "clean"
    assert m["num_images"] == 4 * 2 + 2 + 2 and m["nfe"] == 1 and m["ms_per_image"] > 0
    # a style's number is the mean over its own images: prompt index i always gets the same seed
    images = scale_eval.base_source(cfg).generate(["a anime cat", "a anime ünïcode house 0"], [0, 1])
    assert m["hps_benchmark"]["anime"][redness] == pytest.approx(float(Redness()(images).mean()), rel=1e-4)
    assert "HPS anime" in scale_eval.scale_markdown(m) and "FID" in scale_eval.scale_markdown(m)
    json.dumps(m)


def test_reward_notes_state_which_clip():
    cfg = load_config(EvalConfig, None, ["scale.rewards=[clip-score,hps-v2.1]",
                                         "scale.reward_options[clip-score].model=/w/clip-vit-l14"])
    notes = scale_eval.reward_notes(cfg.scale)
    assert "/w/clip-vit-l14" in notes["clip-score"] and "100 x cosine" in notes["hps-v2.1"]
    assert "openai/clip-vit-large-patch14" in scale_eval.reward_notes(
        load_config(EvalConfig, None, ["scale.rewards=[clip-score]"]).scale)["clip-score"]


# ------------------------------------------------------------------------------ CLI


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _snapshot(tmp_path, path):
    """A trained-run snapshot of the tiny SD1.5 (weights = the pretrained UNet, 1 step)."""
    from rzero.backbones import SD15Backbone
    from rzero.utils.io import atomic_save_safetensors

    snap = tmp_path / "run" / "final"
    snap.mkdir(parents=True)
    unet = SD15Backbone(str(path)).unet
    atomic_save_safetensors({n: p.detach().contiguous() for n, p in unet.named_parameters()},
                            snap / "generator.safetensors")
    (snap / "generator.json").write_text(json.dumps({"steps": 1, "backbone": "sd15", "backbone_path": str(path),
                                                     "method": "r0", "inference_eta": 0.0, "lora": {"rank": 0}}))
    return snap.parent


def test_cli_checkpoint_dispatches_on_backbone_and_writes_json(capsys, tmp_path, tiny_sd15, bench,  # noqa: F811
                                                                redness):
    run_dir = _snapshot(tmp_path, tiny_sd15)
    out = tmp_path / "out.json"
    code, stdout, err = run(capsys, "eval", "--checkpoint", run_dir, f"scale.hps_prompts={bench / 'hps'}",
                            f"scale.rewards=[{redness}]", "scale.device=cpu", "--json", out)
    assert code == 0, err
    m = json.loads(out.read_text())
    assert m["backbone"] == "sd15" and m["nfe"] == 1 and set(m["hps_benchmark"]) == {*scale_eval.HPS_STYLES, "mean"}
    assert "| HPS mean |" in stdout


def test_cli_base_model_dry_run_prints_scale_config(capsys, tiny_sd15):  # noqa: F811
    code, out, err = run(capsys, "eval", "--model", "base", "scale.backbone=sd15", f"scale.backbone_path={tiny_sd15}",
                         "--dry-run")
    assert code == 0, err
    assert "model: base" in out and "scale:" in out and "backbone: sd15" in out


@pytest.mark.parametrize("case, expected", [
    ("missing_prompts", "scale.prompt_files entry '.*nope.txt' not found"),
    ("empty_prompts", "has no prompts"),
    ("missing_inception", "FID Inception weights '.*' not found; download pt_inception-2015-12-05-6726825d.pth"),
    ("few_images", "holds 3 images but there are 4 captions"),
    ("world_scale", "scale.\\* options apply to sd15/sd3 models"),
    ("base_without_backbone", "model=base evaluates a pretrained SD model"),
    ("nothing", "nothing to evaluate"),
])
def test_cli_one_line_errors(capsys, tmp_path, tiny_sd15, bench, case, expected):  # noqa: F811
    base = ["--model", "base", "scale.backbone=sd15", f"scale.backbone_path={tiny_sd15}", "scale.rewards=[aesthetic]"]
    (tmp_path / "empty.txt").write_text("\n  \n")
    coco = [f"scale.coco_images={bench / 'coco_images'}", f"scale.inception={tmp_path / 'none.pth'}"]
    (tmp_path / "four.txt").write_text("a\nb\nc\nd\n")
    argv = {
        "missing_prompts": [*base, f"scale.prompt_files=[{tmp_path / 'nope.txt'}]"],
        "empty_prompts": [*base, f"scale.prompt_files=[{tmp_path / 'empty.txt'}]"],
        "missing_inception": [*base, f"scale.coco_captions={bench / 'coco.txt'}", *coco],
        "few_images": [*base, f"scale.coco_captions={tmp_path / 'four.txt'}", *coco],
        "world_scale": [f"scale.hps_prompts={bench / 'hps'}"],
        "base_without_backbone": ["--model", "base"],
        "nothing": base,
    }[case]
    code, _, err = run(capsys, "eval", *argv)
    assert code in (1, 2), err
    assert err.count("\n") == 1 and err.startswith("rzero: error: ")
    import re

    assert re.search(expected, err), err
