"""Golden scores for users with the real reward weights: rzero next to the official code.

    .venv/bin/python benchmarks/golden_scores.py hps-v2.1 --option path=/weights/HPS_v2.1_compressed.pt
    .venv/bin/python benchmarks/golden_scores.py pickscore --option model=/weights/yuvalkirstain/PickScore_v1 \
        --option processor=/weights/laion/CLIP-ViT-H-14-laion2B-s32B-b79K --device cuda

Scores the 20 fixed golden images and prompts (rzero/rewards/golden.py; written as PNG to
--images) with rzero in float32 and, where the official package imports (hpsv2, image-reward,
torchmetrics, OpenAI's clip; PickScore's README code needs only transformers), with it too,
and prints both side by side with the largest difference. --drift-dtype bfloat16 also scores
with the reward in bf16 (what a bf16 training run sees) and prints the drift. --json writes the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rzero.rewards import REWARDS  # noqa: E402
from rzero.rewards.golden import compare  # noqa: E402


def parse_option(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option wants KEY=VALUE, got '{text}'")
    key, value = text.split("=", 1)
    return key, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reward", choices=sorted(n for n in REWARDS if not n.startswith("world-")))
    ap.add_argument("--option", type=parse_option, action="append", default=[],
                    help="a constructor option of the reward, KEY=VALUE (path=, model=, head=, processor=, ...)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", default=None, help="folder for the golden PNGs (default: a temporary folder)")
    ap.add_argument("--drift-dtype", default=None, choices=["bfloat16", "float16"],
                    help="also score with the reward in this dtype and print its drift from fp32")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    args = ap.parse_args()

    options = dict(args.option)
    print(f"reward {args.reward}, options {options}, device {args.device}")
    rows = compare(args.reward, options, args.images or tempfile.mkdtemp(prefix="rzero-golden-"), args.device,
                   args.drift_dtype)
    print(f"official code: {rows[0]['official_code']}")
    print(f"{'image':<7} {'size':>10} {'rzero':>12} {'official':>12} {'diff':>10}  prompt")
    for r in rows:
        off = "-" if r["official"] is None else f"{r['official']:12.5f}"
        diff = "-" if r["diff"] is None else f"{r['diff']:10.2e}"
        print(f"{r['image']:<7} {r['size']:>10} {r['rzero']:12.5f} {off:>12} {diff:>10}  {r['prompt']}")
    diffs = [abs(r["diff"]) for r in rows if r["diff"] is not None]
    if diffs:
        print(f"max |diff| {max(diffs):.3e}, mean |diff| {sum(diffs) / len(diffs):.3e} over {len(diffs)} images")
    if args.drift_dtype:
        drift = [abs(r["rzero_lowp"] - r["rzero"]) for r in rows]
        print(f"{args.drift_dtype} drift of rzero (vs its fp32 score): max {max(drift):.3e}, "
              f"mean {sum(drift) / len(drift):.3e}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
