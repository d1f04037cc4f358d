"""How strongly R0's weight regularizer holds the weights, against the reward's gradient.

    python benchmarks/r0_gradient_scale.py [--weight 0.15] [--iterations 21] [--preset world_r0]

Runs the preset's R0 iterations by hand and, at each, splits the gradient on the trainable
weights into the regularizer's analytic part, 2 lambda_w (theta - theta0), and the rest (the
reward surrogate's). Prints per-weight RMS of both and of theta - theta0 (docs/decisions.md,
"World v2": at lambda_w 0.15 the two balance once the weights have moved by RMS ~3e-5).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="world_r0")
    ap.add_argument("--weight", type=float, default=0.15)
    ap.add_argument("--iterations", type=int, default=21)
    ap.add_argument("--teacher", default="teacher", choices=["teacher", "teacher_web"])
    args = ap.parse_args()
    from rzero.config import load_config
    from rzero.config.schema import TrainConfig
    from rzero.trainers import R0Trainer

    overrides = [f"regularization.weight={args.weight}", f"iterations={args.iterations}", "track_every=0", "threads=1"]
    if args.teacher != "teacher":
        overrides.append(f"backbone_path={args.teacher}")
    cfg = load_config(TrainConfig, CONFIGS / f"{args.preset}.yaml", overrides)
    with tempfile.TemporaryDirectory() as out:
        tr = R0Trainer(cfg, out)
        params = [p for p in tr.model.parameters() if p.requires_grad]
        theta0 = [p.detach().clone() for p in params]
        for it in range(args.iterations):
            tr.iteration = it
            loss, metrics = tr.train_step(tr.step_generator(0))
            tr.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            total = torch.cat([p.grad.flatten() for p in params])
            dist = torch.cat([(p.detach() - t0).flatten() for p, t0 in zip(params, theta0)])
            reg = 2 * args.weight * dist
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            tr.optimizer.step()
            row = {"iteration": it, "rms_reward_grad": float((total - reg).pow(2).mean().sqrt()),
                   "rms_reg_grad": float(reg.pow(2).mean().sqrt()), "rms_theta_minus_theta0": float(dist.pow(2).mean().sqrt()),
                   **{k: round(v, 4) for k, v in metrics.items() if k.startswith("reward/")}}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
