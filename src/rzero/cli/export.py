"""`rzero export CHECKPOINT --format diffusers|lora OUT`: a trained generator for stock diffusers."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="export a trained sd15/sd3 generator as a diffusers folder or a LoRA file",
                       description="diffusers: a StableDiffusionPipeline / StableDiffusion3Pipeline folder with the "
                                   "trained weights (LoRA merged) and a stock scheduler set up for the generator's "
                                   "steps; the call arguments that reproduce `rzero sample` are in "
                                   "OUT/rzero_export.json. lora: pytorch_lora_weights.safetensors for "
                                   "`pipe.load_lora_weights(OUT)` plus the scheduler config.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="run folder of `rzero train` or its final/ subfolder")
    p.add_argument("--format", dest="fmt", required=True, choices=["diffusers", "lora"], help="what to write")
    p.add_argument("out", metavar="OUT", help="output folder (must be new or empty unless --force)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weight dtype of the diffusers folder (default float32)")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT folder")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..apps.export import export

    out = export(args.checkpoint, args.fmt, args.out, dtype=args.dtype, force=args.force)
    print(f"export: {args.fmt} written to {out} (pipeline arguments in {out}/rzero_export.json)")
    return 0
