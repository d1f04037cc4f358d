"""The `rzero` command line: argv -> resolved config -> library call (STYLE principle 3).

This is the only module that reads argv. Every expected failure (bad config, missing or
corrupt asset, bad prompt file) ends as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _add_config_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("config", nargs="?", default=None,
                   help=f"YAML preset for {what} (optional); later `key.sub=value` arguments override it")
    p.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. teacher.steps=100")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def _split_config(args) -> tuple[str | None, list[str]]:
    """Allow `rzero eval steps=4` (no preset): a first positional with '=' is an override."""
    if args.config is not None and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        return None, [args.config, *args.overrides]
    return args.config, list(args.overrides)


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (argparse prints the usage block first)."""

    def error(self, message):
        print(f"rzero: error: {' '.join(message.split())} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="rzero", description="Reward-centric few-step text-to-image generation (R0, R0+, DI*, DI++) "
                                  "with an offline built-in world.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"rzero {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    world = sub.add_parser("world", help="build or verify the built-in world",
                           description="The built-in world: renderer, prompts, rewards, evaluators and teacher.")
    wsub = world.add_subparsers(dest="world_command", metavar="WORLD_COMMAND")
    b = wsub.add_parser("build", help="train every world network from code and write the assets",
                        description="Train the world's networks (deterministic, resumable) and write assets + manifest.")
    _add_config_args(b, "the world build (e.g. configs/world_build.yaml)")
    b.add_argument("--only", nargs="+", metavar="STAGE", help="build only these stages "
                   "(inspector featnet clip clip_coarse judge quality sharpness teacher teacher_web)")
    b.add_argument("--force", action="store_true", help="rebuild stages even if their asset is up to date")
    v = wsub.add_parser("verify", help="check asset checksums and load every network",
                        description="Check every asset's sha256 against the manifest and load it.")
    v.add_argument("--assets", default=None, help="asset folder (default: the package's own)")

    t = sub.add_parser("train", help="train a few-step generator (R0, R0+, DI*, DI++) from a preset",
                       description="Train a few-step generator by regularized reward maximization. Resumes "
                                   "automatically from the newest checkpoint in --out.")
    _add_config_args(t, "training (e.g. configs/world_r0.yaml)")
    t.add_argument("--out", default=None, help="run folder (default runs/<preset name>)")
    t.add_argument("--assets", default=None, help="world asset folder (default: the package's own)")
    t.add_argument("--allow-config-change", action="store_true",
                   help="resume a run folder even though the method, backbone or generator shape differs from its "
                        "saved config.yaml (other changes, such as more iterations, never need this flag)")

    e = sub.add_parser("eval", help="evaluate the teacher, real renders or a trained generator with the pinned world protocol",
                       description="Inspector accuracy per level, world-FID, diversity, rewards, NFE and ms/image.")
    _add_config_args(e, "the evaluation")
    e.add_argument("--model", choices=["teacher", "real", "base"], help="what to evaluate (default: teacher); "
                   "base: a pretrained SD model (scale.backbone=sd15|sd3 scale.backbone_path=...), SPEC 4 protocol")
    e.add_argument("--checkpoint", help="evaluate a trained generator (run folder of `rzero train`) instead; "
                   "sd15/sd3 runs use the SPEC 4 protocol (scale.* options, docs/scale.md)")
    e.add_argument("--steps", type=int, help="sampling steps (teacher default 25)")
    e.add_argument("--cfg", type=float, help="classifier-free guidance scale (default 7.5)")
    e.add_argument("--eta", type=float, help="re-noise eta (default: a generator's own inference eta; for the "
                   "teacher, the protocol eta 0)")
    e.add_argument("--json", dest="json_path", help="write the flat metrics JSON here")
    e.add_argument("--out", help="write the Markdown report here (default: print it)")
    e.add_argument("--assets", default=None, help="world asset folder (default: the package's own)")

    s = sub.add_parser("sample", help="sample images from a trained generator or the world teacher",
                       description="With --checkpoint, sample a trained few-step generator (no CFG); without, "
                                   "the world teacher with DDIM + CFG. Saves a PNG grid.")
    s.add_argument("--checkpoint", help="run folder of `rzero train` (default: the teacher)")
    s.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    s.add_argument("--prompt-file", help="UTF-8 text file, one prompt per line")
    s.add_argument("--steps", type=int, default=None, help="teacher steps (default 25); a generator "
                   "must be sampled with the step count it was trained for")
    s.add_argument("--cfg", type=float, default=7.5, help="teacher CFG scale")
    s.add_argument("--eta", type=float, default=None, help="re-noise eta (default: the generator's inference eta; for the teacher, the protocol eta 0)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-per-prompt", type=int, default=1)
    s.add_argument("--out", required=True, help="output PNG path")
    s.add_argument("--assets", default=None)

    for name in COMMAND_MODULES:
        _command_module(name).register(sub)

    d = sub.add_parser("demo", help="the main job on the built-in world: samples, metrics and a report",
                       description="Sample the shipped teacher at fixed prompts and seeds, evaluate it and real "
                                   "renders with the world protocol, and write a Markdown report.")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--quick", action="store_true", help="a smaller prompt set (for smoke tests)")
    d.add_argument("--preset", default=None,
                   help="world R0 preset to train (default configs/world_r0.yaml; the report compares R0 with the "
                        "preset's teacher, e.g. configs/world_r0_web.yaml: teacher_web)")
    return parser


# Commands that live in their own module `rzero.cli.<name>`: each has `register(sub)`, which
# adds its parser and sets `handler` as a default (`p.set_defaults(handler=run)`).
COMMAND_MODULES: tuple[str, ...] = ("report", "serve", "export", "bench")


def _command_module(name: str):
    import importlib

    return importlib.import_module(f"{__package__}.{name}")


def _fail(msg: str, code: int = EXIT_FAILURE) -> int:
    from ..utils.io import shorten_line

    print(f"rzero: error: {shorten_line(msg)}", file=sys.stderr)  # one line, echoed values cut
    return code


def check_world_manifest(folder: str | Path | None) -> None:
    """A world asset folder's manifest.json, when there is one, must have the shape the world
    code reads (an object whose 'assets' maps names to objects); a missing one is reported by
    the world code itself."""
    import json

    from ..utils.io import AssetError
    from ..world.assets import MANIFEST, default_asset_dir

    path = Path(folder or default_asset_dir()) / MANIFEST
    if not path.is_file():
        return
    fix = "rebuild it with `rzero world build` (or point --assets at a built asset folder)"
    if path.stat().st_size > 10 << 20:
        raise AssetError(f"world manifest '{path}' is larger than 10 MB; {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise AssetError(f"world manifest '{path}' is not valid JSON ({type(e).__name__}); {fix}") from None
    assets = data.get("assets") if isinstance(data, dict) else None
    if not isinstance(assets, dict):
        raise AssetError(f"world manifest '{path}' has no 'assets' object; {fix}")
    for name, entry in assets.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("sha256", ""), str) and \
            isinstance(entry.get("bytes", 0), int) and isinstance(entry.get("config_hash", ""), str)
        if not ok:
            raise AssetError(f"world manifest '{path}': entry '{name}' is not an object with a string 'sha256' and "
                             f"an integer 'bytes'; {fix}")


def check_reward_options(options: dict, key: str, reserved: tuple[str, ...] = ("asset_dir",),
                         names: list[str] = (), names_key: str = "") -> None:
    """Every reward in `names` is registered, and every option under `key` (reward.options,
    scale.reward_options) is a constructor argument of its reward; before any work (and in
    --dry-run), instead of an error when the rewards are built or a TypeError inside one."""
    import difflib
    import inspect

    from ..config import ConfigError
    from ..rewards import REWARDS

    for i, name in enumerate(names):
        if name not in REWARDS:
            close = difflib.get_close_matches(name, list(REWARDS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"config key '{names_key}[{i}]' names unknown reward '{name}' ({hint}choose from "
                              f"{', '.join(sorted(REWARDS))})")
    for name, opts in options.items():
        if name not in REWARDS:
            continue  # reported with the list of rewards when the reward is built
        params = inspect.signature(REWARDS[name].__init__).parameters
        accepted = [p for p in params if p != "self" and p not in reserved
                    and params[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
        for opt in opts:
            if opt not in accepted:
                raise ConfigError(f"config key '{key}[{name}].{opt}' is not an option of reward '{name}' "
                                  f"(its options: {', '.join(accepted) or 'none'}; docs/rewards.md)")


def check_output_file(path: str | None, flag: str) -> None:
    """Fail before any work if an output file path cannot be written (a folder, a file as parent)."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} '{path}' is a folder; give a file path")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} '{path}': '{parent}' is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise ValueError(f"{flag} '{path}': folder '{parent}' is not writable")
            break


def read_prompt_file(path: str) -> list[str]:
    from ..data.prompts import read_prompts

    return read_prompts(path, "prompt file")


def cmd_world(args) -> int:
    from ..config import format_config, load_config
    from ..config.schema import WorldBuildConfig

    if args.world_command == "build":
        config, overrides = _split_config(args)
        # `--only a b key=value`: argparse hands the override to --only; move it back.
        if args.only:
            overrides += [o for o in args.only if "=" in o]
            args.only = [o for o in args.only if "=" not in o]
        cfg = load_config(WorldBuildConfig, config, overrides)
        if args.dry_run:
            print(format_config(cfg), end="")
            return 0
        from ..world.build import build_world

        check_world_manifest(cfg.out_dir or None)  # the build updates it in place
        command = "rzero " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        manifest = build_world(cfg, only=args.only, force=args.force, command=command)
        print(f"world build: manifest has {len(manifest['assets'])} assets")
        return 0
    if args.world_command == "verify":
        from ..world.loaders import verify_world

        for name, status in verify_world(Path(args.assets) if args.assets else None).items():
            print(f"{name:10s} {status}")
        print("world verify: all assets match their checksums and load")
        return 0
    return _fail("choose a world command: build or verify (see `rzero world --help`)", EXIT_USAGE)


def _eval_config(args):
    from ..config import load_config
    from ..config.schema import EvalConfig

    config, overrides = _split_config(args)
    for flag, key in (("model", "model"), ("steps", "steps"), ("cfg", "cfg")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.eta is not None:
        if not 0 <= args.eta <= 1:
            raise ValueError(f"--eta must be in [0, 1], got {args.eta}")
        if not args.checkpoint:  # the teacher's eta is a protocol field; a generator's lives in its snapshot
            overrides.append(f"eta={args.eta}")
    cfg = load_config(EvalConfig, config, overrides)
    check_reward_options(cfg.scale.reward_options, "scale.reward_options", reserved=(), names=cfg.scale.rewards,
                         names_key="scale.rewards")
    return cfg


def cmd_eval(args) -> int:
    from ..config import format_config

    cfg = _eval_config(args)
    check_output_file(args.json_path, "--json")
    check_output_file(args.out, "--out")
    if args.dry_run:
        print(format_config(cfg), end="")
        return 0
    from ..config.schema import ScaleEvalConfig
    from ..eval.report import eval_markdown, write_json

    backbone = "world"
    if args.checkpoint:
        from ..generator.load import read_meta, resolve_snapshot

        backbone = read_meta(resolve_snapshot(args.checkpoint)).get("backbone", "world")
    if backbone != "world" or cfg.model == "base":
        # SD-class models: the real-scale protocol of SPEC 4 (rzero/eval/scale_eval.py).
        from ..eval.scale_eval import base_source, check_inputs, evaluate_scale, scale_markdown, snapshot_source

        if args.eta is not None:
            raise ValueError("--eta applies to the world protocol; SD-class evaluations take scale.eta=E")
        inputs = check_inputs(cfg.scale)  # every prompt file and weight path, before a model loads
        source = snapshot_source(args.checkpoint, cfg) if args.checkpoint else base_source(cfg)
        metrics = evaluate_scale(source, cfg, inputs=inputs)
        report = scale_markdown(metrics)
    else:
        if cfg.scale != ScaleEvalConfig():
            raise ValueError("scale.* options apply to sd15/sd3 models (a --checkpoint of an SD run or --model base); "
                             "drop them for the world protocol")
        from ..eval.world_eval import evaluate_world, generator_source, real_source, teacher_source

        if args.checkpoint:
            source = generator_source(args.checkpoint, cfg, args.assets, eta=args.eta)
        elif cfg.model == "real":
            source = real_source(cfg.seed + 1)
        else:
            source = teacher_source(cfg, args.assets)
        metrics, _ = evaluate_world(source, cfg, args.assets)
        report = eval_markdown({source.name: metrics})
    if args.json_path:
        write_json(metrics, args.json_path)
        print(f"eval: metrics written to {args.json_path}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        print(f"eval: report written to {args.out}")
    else:
        print(report)
    return 0


SAMPLE_BATCH = 64  # images per forward pass of `rzero sample`
MAX_SAMPLE_IMAGES = 4096  # images in one grid (one PNG)


def cmd_sample(args) -> int:
    import torch

    check_output_file(args.out, "--out")
    if Path(args.out).suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        return _fail(f"--out '{args.out}' must end in .png, .jpg or .webp", EXIT_USAGE)
    prompts = list(args.prompt or [])
    if args.prompt_file:
        prompts += read_prompt_file(args.prompt_file)
    if not prompts:
        return _fail("give at least one --prompt or a --prompt-file", EXIT_USAGE)
    if any(not p.strip() for p in prompts):
        return _fail("empty prompt; give some text (an empty prompt is the unconditional model)", EXIT_USAGE)
    undecodable = [p for p in prompts if any("\ud800" <= c <= "\udfff" for c in p)]
    if undecodable:  # argv bytes that were not UTF-8 arrive as lone surrogates
        return _fail(f"prompt {undecodable[0]!r} is not valid UTF-8 text; pass UTF-8", EXIT_USAGE)
    if (args.steps is not None and args.steps <= 0) or args.num_per_prompt <= 0:
        return _fail("--steps and --num-per-prompt must be positive", EXIT_USAGE)
    if len(prompts) * args.num_per_prompt > MAX_SAMPLE_IMAGES:
        return _fail(f"{len(prompts)} prompts x --num-per-prompt {args.num_per_prompt} is more than "
                     f"{MAX_SAMPLE_IMAGES} images in one grid; ask for fewer", EXIT_USAGE)
    if args.eta is not None and not 0 <= args.eta <= 1:
        return _fail("--eta must be in [0, 1]", EXIT_USAGE)
    from ..eval.report import save_grid

    prompts = [p for p in prompts for _ in range(args.num_per_prompt)]
    if args.checkpoint:
        from ..generator import load_generator

        gen, meta = load_generator(args.checkpoint, args.assets)
        if args.steps is not None and args.steps != gen.steps:
            return _fail(f"this generator was trained for {gen.steps} steps; drop --steps or pass --steps {gen.steps}",
                         EXIT_USAGE)
        backbone = gen.backbone
        eta = meta.get("inference_eta", 0.0) if args.eta is None else args.eta

        def run(batch, noise, gens):
            return gen.sample(batch, noise, eta, generator=gens)
    else:
        from ..backbones import WorldBackbone

        backbone = WorldBackbone(asset_dir=args.assets).eval()
        from ..config.schema import EvalConfig

        eta = EvalConfig.eta if args.eta is None else args.eta  # the protocol's teacher eta (docs/decisions.md)

        def run(batch, noise, gens):
            return backbone.sample(batch, noise, steps=args.steps or 25, cfg=args.cfg, eta=eta, generator=gens)

    from tqdm.auto import tqdm

    from ..utils.seeding import per_image_draws

    # Per-image draws: an image depends on (seed, index) only, not on how the prompts are batched.
    chunks = []
    for start in tqdm(range(0, len(prompts), SAMPLE_BATCH), desc="sample", unit="batch",
                      disable=len(prompts) <= SAMPLE_BATCH):
        idx = range(start, min(start + SAMPLE_BATCH, len(prompts)))
        chunks.append(run([prompts[i] for i in idx], *per_image_draws(backbone.latent_shape, args.seed, idx)))
    images = torch.cat(chunks)
    save_grid(images, args.out, nrow=args.num_per_prompt if args.num_per_prompt > 1 else 8, upscale=4)
    print(f"sample: {len(prompts)} images written to {args.out}")
    return 0


def cmd_train(args) -> int:
    from ..config import format_config, load_config
    from ..config.schema import TrainConfig

    config, overrides = _split_config(args)
    cfg = load_config(TrainConfig, config, overrides)
    check_reward_options(cfg.reward.options, "reward.options", names=cfg.reward.names, names_key="reward.names")
    if args.dry_run:
        print(format_config(cfg), end="")
        return 0
    from ..trainers import TRAINERS

    out = Path(args.out) if args.out else Path("runs") / (Path(config).stem if config else cfg.method)
    check_resume_config(out, cfg, args.allow_config_change)
    trainer = TRAINERS[cfg.method](cfg, out, asset_dir=args.assets)
    generator, backbone = getattr(trainer, "generator", None), getattr(trainer, "backbone", None)
    if generator is not None and backbone is not None:  # sd15 reads its schedule from the model folder
        from ..generator.load import check_schedule_timesteps

        check_schedule_timesteps(generator.timesteps, backbone.schedule, "generator.timesteps")
    try:
        final = trainer.fit()
    finally:
        trainer.release_processes()
    print(f"train: generator snapshot written to {final}")
    return 0


def check_resume_config(out: Path, cfg, allow_change: bool) -> None:
    """Refuse to resume a run folder whose saved config.yaml has another method, backbone or
    generator shape (the checkpoint would be continued as something it is not), unless
    --allow-config-change; the other fields (iterations, logging...) may change freely."""
    from ..config import ConfigError, load_config
    from ..config.schema import TrainConfig
    from ..utils.guards import resume_changes
    from ..utils.io import check_run_tree, run_file

    saved_path = out / "config.yaml"
    if not out.is_dir() or not saved_path.exists():
        return
    check_run_tree(out)
    run_file(out, saved_path)
    flag = "pass another --out, or --allow-config-change to resume it with the new config anyway"
    try:
        saved = load_config(TrainConfig, saved_path)
    except ConfigError as e:
        if allow_change:
            return
        raise ConfigError(f"run folder '{out}' has a config.yaml this version cannot read ({e}); {flag}") from None
    changes = resume_changes(saved, cfg)
    if changes and not allow_change:
        raise ConfigError(f"run folder '{out}' was trained with another config ({'; '.join(changes)}); resuming "
                          f"would continue its checkpoints as a different run: {flag}")


def cmd_demo(args) -> int:
    from ..apps.demo import run_demo

    kwargs = {"preset": Path(args.preset)} if args.preset else {}
    path = run_demo(Path(args.out), quick=args.quick, **kwargs)
    print(f"demo: report written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    # Overrides may come after options (`rzero train x.yaml --out d lr=1`): argparse leaves
    # them unparsed, so collect `key=value` leftovers for commands that take overrides.
    args, extra = parser.parse_known_args(argv)
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if len(overrides) != len(extra) or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides:
        args.overrides = list(args.overrides) + overrides
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from ..config import ConfigError
    from ..utils.io import AssetError

    handlers = {"world": cmd_world, "train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "demo": cmd_demo}
    try:
        handler = handlers.get(args.command) or args.handler
        if hasattr(args, "assets"):
            check_world_manifest(args.assets)
        return handler(args)
    except ConfigError as e:
        return _fail(str(e), EXIT_USAGE)
    except (AssetError, ValueError) as e:
        return _fail(" ".join(str(e).split()))
    except MemoryError:
        return _fail("out of memory; lower batch_size (use grad_accum for a larger effective batch) or the number "
                     "of images asked for")
    except RuntimeError as e:  # torch's allocator failures are RuntimeErrors; anything else is a bug
        text = str(e)
        if not any(m in text for m in ("can't allocate memory", "out of memory", "not enough memory")):
            raise
        return _fail(f"out of memory ({text.splitlines()[0][:160]}); lower batch_size (use grad_accum for a larger "
                     "effective batch) or the number of images asked for")
    except OSError as e:  # unwritable output, a folder where a file is expected, a full disk...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return _fail(f"{e.strerror or e}{where}; check the path and its permissions")
    except KeyboardInterrupt as e:  # training's TrainingInterrupted carries its message and 128 + signal
        return _fail(str(e) or "interrupted", getattr(e, "exit_code", 130))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
