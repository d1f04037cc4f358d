"""Export round trip (issue 5 acceptance): stock diffusers pipelines reproduce rzero's own 4-step
samples from the same noise, for a diffusers folder (sd15 eps and v, sd3) and a LoRA file."""

from __future__ import annotations

import json

import pytest
import torch

from rzero.cli.main import main
from rzero.apps.export import export, stock_scheduler
from test_sd_backbones import PROMPTS, Redness, r0_config
from tiny_sd import prompt_file, tiny_sd3, tiny_sd15, tiny_sd15_v  # noqa: F401  (pytest fixtures)

TOL = 1e-3  # max |difference| in [0, 1] pixel units, fp32 (measured: below 1e-6)


def pipeline_class(kind):
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline

    return StableDiffusion3Pipeline if kind == "sd3" else StableDiffusionPipeline


def no_t5(kind):
    return {"text_encoder_3": None, "tokenizer_3": None} if kind == "sd3" else {}


def train(path, kind, prompt_file, out, *extra):  # noqa: F811
    from rzero.trainers import R0Trainer

    # A large learning rate so the trained generator is far from the base (the comparison can fail).
    cfg = r0_config(path, kind, prompt_file, "optim.lr=0.05", "optim.grad_clip=0", *extra)
    return R0Trainer(cfg, out, rewards={"redness": Redness().freeze()}).fit()


def rzero_images(run, noise):
    from rzero.generator import load_generator

    gen, _ = load_generator(run)
    return (gen.sample(PROMPTS, noise, 0.0, generator=torch.Generator().manual_seed(0)) + 1) / 2  # [0, 1]


def pipe_images(pipe, info, noise):
    with torch.no_grad():
        return pipe(PROMPTS, latents=noise.clone(), output_type="pt", **info["pipeline_call"]).images


@pytest.mark.parametrize("kind", ["sd15", "sd15_v", "sd3"])
def test_diffusers_folder_reproduces_rzero_samples(kind, tiny_sd15, tiny_sd15_v, tiny_sd3, prompt_file, tmp_path):  # noqa: F811
    path = {"sd15": tiny_sd15, "sd15_v": tiny_sd15_v, "sd3": tiny_sd3}[kind]
    kind_bb = "sd3" if kind == "sd3" else "sd15"
    run = train(path, kind_bb, prompt_file, tmp_path / "run")
    out = export(tmp_path / "run", "diffusers", tmp_path / "export")
    info = json.loads((out / "rzero_export.json").read_text())
    assert info["steps"] == 4 and info["pipeline_call"]["guidance_scale"] == 1.0
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    ours = rzero_images(run, noise)
    P = pipeline_class(kind_bb)
    exported = P.from_pretrained(out, **info["pipeline_load"])
    theirs = pipe_images(exported, info, noise)
    assert theirs.shape == ours.shape == (2, 3, 16, 16)
    assert float((theirs - ours).abs().max()) < TOL
    # The same stock call on the untrained base model gives other images: the export carries the training.
    base = P.from_pretrained(path, **no_t5(kind_bb))
    base.scheduler = exported.scheduler
    assert float((pipe_images(base, info, noise) - ours).abs().max()) > 20 * TOL


def amplify_lora(run, factor: float = 30.0):
    """Scale the snapshot's B matrices: two tiny training steps leave the adapters too small for the
    with/without comparison below to tell a wrongly scaled (or ignored) LoRA from the right one."""
    from rzero.utils.io import atomic_save_safetensors, load_safetensors

    path = run / "generator.safetensors"
    w = load_safetensors(path)
    atomic_save_safetensors({k: v * factor if "lora_B" in k else v for k, v in w.items()}, path)


@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_lora_file_loads_with_load_lora_weights(kind, tiny_sd15, tiny_sd3, prompt_file, tmp_path):  # noqa: F811
    path = tiny_sd15 if kind == "sd15" else tiny_sd3
    run = train(path, kind, prompt_file, tmp_path / "run", "lora.rank=4", "lora.alpha=2")
    amplify_lora(run)
    out = export(run, "lora", tmp_path / "lora")
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    info = json.loads((out / "rzero_export.json").read_text())
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(8))
    ours = rzero_images(run, noise)
    P = pipeline_class(kind)
    pipe = P.from_pretrained(path, **no_t5(kind))
    pipe.scheduler = type(pipe.scheduler).from_config(json.loads((out / "scheduler_config.json").read_text())) \
        if kind == "sd3" else __import__("diffusers").DDIMScheduler.from_pretrained(out)
    without = pipe_images(pipe, info, noise)
    pipe.load_lora_weights(out)
    with_lora = pipe_images(pipe, info, noise)
    assert float((with_lora - ours).abs().max()) < TOL
    assert float((without - ours).abs().max()) > 20 * TOL  # the LoRA file was really applied (alpha != rank)


def test_cli_export_and_its_errors(tiny_sd15, prompt_file, tmp_path, capsys):  # noqa: F811
    train(tiny_sd15, "sd15", prompt_file, tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--format", "diffusers", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model_index.json").is_file()
    capsys.readouterr()
    # Non-empty output folder, LoRA from a fully fine-tuned run, a folder without a snapshot: one line each.
    assert main(["export", str(tmp_path / "run"), "--format", "diffusers", str(tmp_path / "out")]) == 1
    assert main(["export", str(tmp_path / "run" / "final"), "--format", "lora", str(tmp_path / "l")]) == 1
    assert main(["export", str(tmp_path), "--format", "lora", str(tmp_path / "l2")]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rzero: error: ")]
    assert len(err) == 3
    assert "not empty" in err[0] and "--force" in err[0]
    assert "fully fine-tuned" in err[1] and "--format diffusers" in err[1]
    assert "no generator snapshot" in err[2]
    assert main(["export", str(tmp_path / "run"), "--format", "diffusers", str(tmp_path / "out"), "--force"]) == 0


def test_world_snapshot_is_refused(tmp_path):
    run = tmp_path / "run"  # the output lies beside the run: export refuses an OUT inside it
    (run / "final").mkdir(parents=True)
    (run / "final" / "generator.json").write_text(json.dumps({"backbone": "world", "steps": 4}))
    (run / "final" / "generator.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="backbone 'world'.*no diffusers pipeline"):
        export(run, "diffusers", tmp_path / "o")


def test_stock_schedulers_take_the_generator_grid():
    from rzero.diffusion import FlowSchedule

    cfg = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
    sched, call = stock_scheduler("sd15", cfg, [999, 749, 499, 249], 1000)
    assert sched.timesteps.tolist() == [999, 749, 499, 249] and call["num_inference_steps"] == 4
    with pytest.raises(ValueError, match="not DDIM's trailing grid"):
        stock_scheduler("sd15", cfg, [999, 666, 333], 1000)  # 3 does not divide 1000
    ts = FlowSchedule(shift=3.0).evenly_spaced_timesteps(4).tolist()
    sched, call = stock_scheduler("sd3", {"shift": 3.0}, ts, 1000)
    assert call["sigmas"] == pytest.approx([1.0, 0.75, 0.5, 0.25], abs=1e-6)
    sched.set_timesteps(sigmas=call["sigmas"])
    assert sched.sigmas.tolist() == pytest.approx(ts + [0.0], abs=1e-6)
