"""Where the DI* / DI++ divergence pushes a trained one-step generator, timestep by timestep.

    python benchmarks/distar_push.py RUN_DIR [--step step_000100] [--json OUT.json]

Loads a distar / dipp run's checkpoint (generator, online fake score, the run's config), draws
one batch of the generator's samples x0 from fixed noise z, and for each timestep of a grid
averages the divergence push on x0 over several noise draws (the push the trainer injects,
with the run's weighting, pseudo-Huber C and alpha_cfg). It reports, per timestep:

- the push's norm per sample (which timesteps dominate the generator's update);
- its cosine with x* - x0, where x* is the reference model's own sample from the same z
  (25 DDIM steps at the run's alpha_cfg): a push that is "toward the teacher" has a positive
  cosine (distribution matching does not require it to point at x* exactly, so the cosine is
  a direction check, not a loss);
- the RMS distance of the reference's guided x0-prediction from x0, which shows where CFG's
  x0-predictions leave the image range.

docs/decisions.md ("What holds the one-step plateau") cites its output. CPU, one thread, about a minute.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

GRID = (20, 50, 100, 200, 400, 700, 950)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a distar or dipp run folder (with config.yaml and checkpoints/)")
    ap.add_argument("--step", default=None, help="checkpoint folder name (default: the newest)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--draws", type=int, default=8, help="noise draws averaged per timestep")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--assets", type=Path, default=None, help="world asset folder (default: the shipped one)")
    args = ap.parse_args(argv)

    from rzero.config import load_config
    from rzero.config.schema import TrainConfig
    from rzero.diffusion import broadcast_to
    from rzero.diffusion.samplers import ddim_sample
    from rzero.trainers import TRAINERS

    ckpts = sorted((args.run / "checkpoints").glob("step_*"))
    if not ckpts:
        raise SystemExit(f"distar_push: no checkpoints in '{args.run / 'checkpoints'}'; train with checkpoint_every > 0")
    src = args.run / "checkpoints" / args.step if args.step else ckpts[-1]
    if not src.is_dir():
        raise SystemExit(f"distar_push: no checkpoint '{src}'; pick one of {', '.join(c.name for c in ckpts)}")
    cfg = load_config(TrainConfig, args.run / "config.yaml", ["threads=1"])
    if cfg.method not in ("distar", "dipp"):
        raise SystemExit(f"distar_push: '{args.run}' is a {cfg.method} run; it needs distar or dipp")
    with tempfile.TemporaryDirectory() as tmp:
        # Resume a copy, so that the run's own folder (stats, checkpoints) is never touched.
        shutil.copytree(src, Path(tmp) / "checkpoints" / src.name)
        tr = TRAINERS[cfg.method](cfg, tmp, asset_dir=args.assets)
        tr.setup()
        tr.maybe_resume()
    g = torch.Generator().manual_seed(123)
    b, w_cfg, sched = args.batch, cfg.di.alpha_cfg, tr.backbone.schedule
    with torch.no_grad():
        prompts = tr.prompts(b, g)
        cond, uncond = tr.backbone.encode_prompts(prompts), tr.empty_cond(b)
        z = torch.randn((b, *tr.backbone.latent_shape), generator=g)
        x0 = tr.generator(z, cond, 0.0).x0

        x_star = ddim_sample(lambda x, t: tr.ref.guided_x0(x, t, cond, uncond, w_cfg), z,
                             sched.sampling_timesteps(25), sched)
    toward = (x_star - x0).flatten(1)
    rows, total = [], torch.zeros_like(x0)
    for tv in GRID:
        t = torch.full((b,), tv, dtype=torch.long)
        a, s = broadcast_to(sched.alpha(t), x0), broadcast_to(sched.sigma(t), x0)
        push, ref_err = torch.zeros_like(x0), 0.0
        for _ in range(args.draws):
            x_t = a * x0 + s * torch.randn(x0.shape, generator=g)
            with torch.no_grad():
                p, _, x0_ref = tr.push_at(x0, x_t, t, a, s, cond, uncond)
            push += p / args.draws
            ref_err += float((x0_ref - x0).pow(2).mean().sqrt()) / args.draws
        total += push
        rows.append({"t": tv, "push_norm": float(push.flatten(1).norm(dim=1).mean()),
                     "cos_toward_teacher_sample": float(torch.cosine_similarity(push.flatten(1), toward, dim=1).mean()),
                     "ref_x0_rms_from_x0": ref_err})
        print(f"t {tv:4d}  push norm {rows[-1]['push_norm']:7.2f}  cos(push, x* - x0) "
              f"{rows[-1]['cos_toward_teacher_sample']:+.3f}  |x0_ref - x0| rms {ref_err:.3f}")
    summed = float(torch.cosine_similarity(total.flatten(1), toward, dim=1).mean())
    print(f"sum over the grid: cos(push, x* - x0) {summed:+.3f}; |x* - x0| rms {float(toward.pow(2).mean().sqrt()):.3f}")
    out = {"run": str(args.run), "checkpoint": src.name, "method": cfg.method, "alpha_cfg": w_cfg,
           "huber_c": cfg.di.huber_c, "weighting": cfg.di.weighting, "draws": args.draws, "batch": b,
           "per_t": rows, "sum_cos_toward_teacher_sample": summed}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
