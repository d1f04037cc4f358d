"""`rzero report RUN_DIR`: one self-contained HTML page per training run.

The page holds, top to bottom: a summary (method, progress, state), the reward-hacking
alarm, the metrics (first and last value of every logged metric, `track/` held-out metrics
first, and any `eval_*.json` beside the run), training curves, the teacher and the
generator side by side at the run's fixed grid prompts and seeds, the sample grids over
training, and the resolved config.

Everything is embedded (PNGs as base64 data URIs, inline CSS, no script), so the file opens
offline and can be mailed as it is. It works on a run that is still going or was
interrupted: each part that is missing says "not available" and why, instead of failing.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from tqdm.auto import tqdm

from ..utils.io import AssetError, atomic_write_bytes, check_run_tree
from ..utils.stats import read_jsonl

ALARM_FILE = "hacking_alarm.json"
CACHE_DIR = "report_cache"  # teacher grids, keyed by the teacher's checksum and sampler settings
GRID_SEEDS = 4  # images per prompt in the trainers' grids (R0Trainer.sample_grid)
MAX_FILE_BYTES = 64 << 20  # a grid PNG or JSON file larger than this is skipped, never embedded
_STEP_PNG = re.compile(r"step_(\d+)\.png$")


@dataclass
class Run:
    """What a run folder holds; every field may be empty for a run that just started."""

    path: Path
    config_text: str = ""
    config: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # stats.jsonl records
    evals: dict[str, dict] = field(default_factory=dict)  # eval_<name>.json -> flat metrics
    grids: list[tuple[int, Path]] = field(default_factory=list)  # (iteration, samples/step_*.png)
    snapshot: dict | None = None  # final/generator.json
    checkpoints: list[int] = field(default_factory=list)
    alarm: dict | None = None  # hacking_alarm.json
    problems: list[str] = field(default_factory=list)  # unreadable files, shown on the page


def _too_big(path: Path, run: Run) -> bool:
    if path.stat().st_size > MAX_FILE_BYTES:
        run.problems.append(f"{path.name}: larger than {MAX_FILE_BYTES >> 20} MB; skipped")
        return True
    return False


def _read_json(path: Path, run: Run) -> dict | None:
    try:
        if _too_big(path, run):
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        run.problems.append(f"{path.name}: not readable JSON ({type(e).__name__}); skipped")
        return None
    if not isinstance(data, dict):
        run.problems.append(f"{path.name}: a JSON {type(data).__name__}, expected an object; skipped")
        return None
    return data


def _checked_config(text: str, run: Run) -> dict:
    """config.yaml as a dict of the schema's types (parsed like a config: no aliases), or {}."""
    import yaml

    from ..config import ConfigError, from_dict, to_dict
    from ..config.io import load_yaml_text
    from ..config.schema import TrainConfig

    try:
        loaded = load_yaml_text(text)
    except yaml.YAMLError:
        run.problems.append("config.yaml: not valid YAML; shown as text only")
        return {}
    if not isinstance(loaded, dict):
        run.problems.append("config.yaml: not a mapping of keys; shown as text only")
        return {}
    try:
        return to_dict(from_dict(TrainConfig, loaded))
    except ConfigError as e:
        run.problems.append(f"config.yaml: does not match this version's config ({e}); shown as text only")
        return {}


def _checked_rows(rows: list, run: Run) -> list[dict]:
    """The stats rows that are objects with an integer step and a numeric time; the rest skipped."""
    good = [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int)
            and not isinstance(r.get("step"), bool) and isinstance(r.get("time", 0), (int, float))]
    if len(good) != len(rows):
        run.problems.append(f"stats.jsonl: {len(rows) - len(good)} rows are not objects with an integer 'step'; "
                            "skipped")
    return good


def _checked_snapshot(meta: dict | None, run: Run) -> dict | None:
    from ..generator.load import _meta_problem

    if meta is None:
        return None
    problem = _meta_problem(meta)
    if not problem and not isinstance(meta.get("iteration", 0), int):
        problem = "'iteration' is not an integer"
    if not problem and not isinstance(meta.get("train_seconds", 0), (int, float)):
        problem = "'train_seconds' is not a number"
    if problem:
        run.problems.append(f"final/generator.json: {problem}; the snapshot is ignored")
        return None
    return meta


def read_run(run_dir: str | Path) -> Run:
    """Collect a run folder's files; raise AssetError if it is not a run folder at all, or if it
    holds a link that leads out of it (or a device): the report embeds what it reads."""
    p = Path(run_dir)
    if not p.exists():
        raise AssetError(f"run folder '{p}' not found; pass the --out folder of `rzero train`")
    if not p.is_dir():
        raise AssetError(f"'{p}' is a file; pass the --out folder of `rzero train`")
    markers = [p / "config.yaml", p / "stats.jsonl", p / "samples", p / "final" / "generator.json"]
    if not any(m.exists() for m in markers):
        raise AssetError(f"'{p}' is not a training run folder (no config.yaml, stats.jsonl, samples/ or final/); "
                         "pass the --out folder of `rzero train`")
    check_run_tree(p)
    run = Run(p)
    if (p / "config.yaml").is_file() and not _too_big(p / "config.yaml", run):
        run.config_text = (p / "config.yaml").read_text(encoding="utf-8", errors="replace")
        run.config = _checked_config(run.config_text, run)
    if (p / "stats.jsonl").is_file():
        try:
            if not _too_big(p / "stats.jsonl", run):  # skips a half-written last line of a live run
                run.rows = _checked_rows(read_jsonl(p / "stats.jsonl"), run)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            run.problems.append(f"stats.jsonl: {' '.join(str(e).split())[:300]}; metrics and curves skipped")
    for f in sorted(p.glob("eval_*.json")):
        data = _read_json(f, run)
        if data is not None:
            run.evals[f.stem[len("eval_"):]] = data
    run.grids = sorted((int(m.group(1)), f) for f in (p / "samples").glob("step_*.png")
                       if (m := _STEP_PNG.search(f.name)) and f.is_file() and not _too_big(f, run))
    if (p / "final" / "generator.json").is_file():
        run.snapshot = _checked_snapshot(_read_json(p / "final" / "generator.json", run), run)
    run.checkpoints = sorted(int(m.group(1)) for d in (p / "checkpoints").glob("step_*")
                             if (m := re.fullmatch(r"step_(\d+)", d.name)) and (d / "state.json").is_file())
    if (p / ALARM_FILE).is_file():
        run.alarm = _read_json(p / ALARM_FILE, run)
        if run.alarm is not None and not isinstance(run.alarm.get("events", []), list):
            run.problems.append(f"{ALARM_FILE}: 'events' is not a list; the file is ignored")
            run.alarm = None
    return run


# ---------------------------------------------------------------- metrics
def metric_history(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """key -> [(step, value)] over the finite numbers logged for it (`step`/`time` excluded)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        for k, v in r.items():
            if k in ("step", "time") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if math.isfinite(v):
                out.setdefault(k, []).append((int(r["step"]), float(v)))
    return out


def _ordered_keys(keys) -> list[str]:
    """`track/` (held-out) first, then rewards, then the rest, each alphabetical."""
    rank = lambda k: (0 if k.startswith("track/") else 1 if k.startswith("reward/") else 2, k)  # noqa: E731
    return sorted(keys, key=rank)


def _better_direction(key: str) -> int:
    """+1 if a higher value is better, -1 if lower is better, 0 if it is not a quality measure."""
    if key.startswith("reward/") or key.startswith("track/acc"):
        return 1
    if key.endswith("fid"):
        return -1
    return 0


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return html.escape(str(v))
    if isinstance(v, float) and not math.isfinite(v):
        return "n/a"
    if isinstance(v, int):
        return str(v)
    a = abs(v)
    return f"{v:.4g}" if a == 0 or 1e-3 <= a < 1e5 else f"{v:.3e}"


# ---------------------------------------------------------------- images
def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png_bytes_of_figure(fig) -> bytes:
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def curve_figures(history: dict[str, list[tuple[int, float]]]) -> list[tuple[str, bytes]]:
    """One PNG per metric group (the part of the key before '/'), one panel per key.

    `reward_std/<name>` is drawn as a +-1 std band around `reward/<name>` instead of its own
    panel. Long runs also get a smoothed line (EMA over ~5 % of the points): per-iteration
    rewards are noisy at small batch sizes and the trend is what one looks for.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups: dict[str, list[str]] = {}
    for k in _ordered_keys(history):
        if k.startswith("reward_std/"):
            continue
        groups.setdefault(k.split("/")[0] if "/" in k else "training", []).append(k)
    titles = {"track": "held-out tracking (track/)", "reward": "rewards (mean, +-1 std over the batch)"}
    out = []
    for group, keys in groups.items():
        cols = min(3, len(keys))
        nrows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.0 * cols, 2.8 * nrows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            steps, vals = zip(*history[key])
            ax.plot(steps, vals, marker="o" if len(vals) < 30 else None, markersize=3, lw=1,
                    color="#1f77b4", alpha=0.45 if len(vals) >= 30 else 1.0)
            std = dict(history.get("reward_std/" + key.split("/", 1)[-1], [])) if key.startswith("reward/") else {}
            if std:
                pts = [(s, v, std[s]) for s, v in zip(steps, vals) if s in std]
                if pts:
                    s_, v_, d_ = zip(*pts)
                    ax.fill_between(s_, [a - b for a, b in zip(v_, d_)], [a + b for a, b in zip(v_, d_)],
                                    color="#1f77b4", alpha=0.15, lw=0)
            if len(vals) >= 30:
                alpha, acc, smooth = 1.0 / max(2.0, 0.05 * len(vals)), vals[0], []
                for v in vals:
                    acc += alpha * (v - acc)
                    smooth.append(acc)
                ax.plot(steps, smooth, color="#d62728", lw=1.5, label="smoothed")
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("iteration", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.tight_layout()
        out.append((titles.get(group, group), _png_bytes_of_figure(fig)))
        plt.close(fig)
    return out


def _grid_recipe():
    """Prompts and start noise of the trainers' sample grids (mirrors R0Trainer.sample_grid):
    the fixed world prompts, GRID_SEEDS images each, noise from (seed 0, image index)."""
    from ..world.prompts import fixed_prompts

    prompts, _ = fixed_prompts()
    return prompts, [p for p in prompts for _ in range(GRID_SEEDS)]


def _grid_png(images) -> bytes:
    from ..eval.report import save_grid

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "grid.png"
        save_grid(images, path, nrow=GRID_SEEDS, upscale=3)
        return path.read_bytes()


def teacher_grid(run: Run, asset_dir=None, steps: int = 25, cfg: float = 7.5) -> tuple[bytes, str]:
    """The teacher at the run's grid prompts and seeds (DDIM + CFG); cached in RUN_DIR/report_cache.

    The cache name carries the teacher's checksum and the sampler settings, so a rebuilt
    teacher or other settings never reuse a stale grid.
    """
    import torch

    from ..backbones import make_backbone
    from ..utils.seeding import randn_per_image

    name = run.config.get("backbone", "world")
    key = name
    if name == "world":
        from ..world.assets import read_manifest

        key = "world-" + read_manifest(asset_dir)["assets"]["teacher"]["sha256"][:12]
    from ..config.schema import EvalConfig

    eta = EvalConfig().eta  # the protocol's teacher sampler
    cache = run.path / CACHE_DIR / f"teacher_{key}_s{steps}_cfg{cfg:g}_eta{eta:g}.png"
    label = f"teacher: {steps} DDIM steps, CFG {cfg:g}, eta {eta:g}"
    if cache.is_file():
        return cache.read_bytes(), label
    _, grid_prompts = _grid_recipe()
    backbone = make_backbone(name, asset_dir=asset_dir).eval()
    noise = randn_per_image(backbone.latent_shape, 0, range(len(grid_prompts)))
    images = backbone.sample(grid_prompts, noise, steps=steps, cfg=cfg, eta=eta,
                             generator=torch.Generator().manual_seed(0))
    png = _grid_png(images)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, png)
    except OSError:
        pass  # a read-only run folder: the report still embeds the grid, it is just not cached
    return png, label


def generator_grid(run: Run, asset_dir=None) -> tuple[bytes, str]:
    """The generator at the same prompts and seeds: the final snapshot (EMA weights) if the
    run finished, else the newest training-time grid (the raw weights at that iteration)."""
    import torch

    from ..utils.seeding import randn_per_image

    if run.snapshot is not None:
        from ..generator import load_generator

        gen, meta = load_generator(run.path, asset_dir)
        _, grid_prompts = _grid_recipe()
        noise = randn_per_image(gen.backbone.latent_shape, 0, range(len(grid_prompts)))
        eta = float(meta.get("inference_eta", 0.0))
        images = gen.sample(grid_prompts, noise, eta, generator=torch.Generator().manual_seed(0))
        return _grid_png(images), (f"generator: final snapshot after {meta.get('iteration', '?')} iterations, "
                                   f"{gen.steps} steps, eta {eta:g}")
    if run.grids:
        step, path = run.grids[-1]
        return path.read_bytes(), f"generator: training weights at iteration {step} (no final/ snapshot yet)"
    raise AssetError("no final/ snapshot and no samples/step_*.png yet")


# ---------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
main{max-width:1150px;margin:0 auto;padding:1.2rem 1.5rem 4rem}
h1{font-size:1.5rem;margin:.3rem 0 .2rem}h2{font-size:1.15rem;margin:2rem 0 .6rem;border-bottom:1px solid #d5d9e0;padding-bottom:.3rem}
nav a{margin-right:.9rem;font-size:.9rem;color:#2456a6}
.muted{color:#5f6b7a;font-size:.9rem}
.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:.8rem 1rem;margin:.6rem 0}
table{border-collapse:collapse;font-size:.86rem;background:#fff}
th,td{border:1px solid #dde1e7;padding:.25rem .55rem;text-align:right}th{background:#eef1f5}
td:first-child,th:first-child{text-align:left;font-family:ui-monospace,monospace}
.up{color:#1a7f37}.down{color:#b42318}
img.px{image-rendering:pixelated;image-rendering:crisp-edges;max-width:100%}
.pair{display:flex;gap:1.2rem;flex-wrap:wrap}.pair figure{margin:0}
figure figcaption{font-size:.85rem;color:#5f6b7a;margin-top:.3rem;max-width:420px}
.strip{display:flex;gap:.8rem;overflow-x:auto;padding-bottom:.5rem}.strip figure{margin:0;flex:0 0 auto}
.strip img{height:300px}
.alarm-on{border-left:6px solid #b42318}.alarm-off{border-left:6px solid #1a7f37}.alarm-na{border-left:6px solid #9aa4b2}
pre{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:.8rem;overflow-x:auto;font-size:.82rem}
ol.prompts{font-size:.85rem;margin:.3rem 0}
"""


def _na(why: str) -> str:
    return f'<p class="muted">Not available: {html.escape(why)}</p>'


def _summary(run: Run, history) -> str:
    cfg, snap = run.config, run.snapshot
    total = cfg.get("iterations")
    last_step = max((r.get("step", 0) for r in run.rows), default=None)
    done = snap.get("iteration") if snap else max([last_step or 0, *run.checkpoints], default=0)
    if snap is not None:
        early = isinstance(total, int) and isinstance(done, int) and done < total
        state = "finished" + (" (stopped early by its time budget)" if early else "")
    else:
        ago = time.time() - max((r.get("time", 0) for r in run.rows), default=0)
        state = ("in progress or interrupted: no final/ snapshot yet" +
                 (f"; last log {ago / 60:.0f} min ago" if run.rows else ""))
    gen = cfg.get("generator") if isinstance(cfg.get("generator"), dict) else {}
    items = [("method", cfg.get("method", snap.get("method") if snap else None)),
             ("backbone", cfg.get("backbone", snap.get("backbone") if snap else None)),
             ("state", state), ("iterations", f"{done} of {total if total is not None else '?'}"),
             ("batch size", cfg.get("batch_size")), ("generator steps", gen.get("steps")),
             ("rewards", ", ".join((cfg.get("reward") or {}).get("names", []) or []) or None),
             ("training time", f"{snap['train_seconds']:.0f} s" if snap and "train_seconds" in snap else None),
             ("checkpoints", ", ".join(map(str, run.checkpoints)) or None),
             ("logged metrics", f"{len(history)} keys over {len(run.rows)} records" if run.rows else None)]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items
                   if v not in (None, ""))
    return f'<table class="summary">{rows}</table>'


def _alarm_section(run: Run, history) -> str:
    """State of the engine's reward-hacking alarm (trainers/alarm.py).

    The engine writes hacking_alarm.json ({"patience", "events": [...]}) and a `hacking_alarm`
    list in final/generator.json only once the alarm fired, and logs `alarm/streak` at every
    held-out evaluation, so "not raised" is known only from those logs.
    """
    patience = run.config.get("alarm_patience")
    events, extra = [], {}
    if run.alarm is not None:
        events = run.alarm.get("events") or []
        patience = run.alarm.get("patience", patience)
        extra = {k: v for k, v in run.alarm.items() if k not in ("events", "patience")}
    elif run.snapshot and run.snapshot.get("hacking_alarm"):
        flag = run.snapshot["hacking_alarm"]
        events = flag if isinstance(flag, list) else []
    fired = run.alarm is not None or bool(run.snapshot and run.snapshot.get("hacking_alarm"))
    streaks = history.get("alarm/streak", [])
    if fired:
        rows = "".join(f"<tr><td>{_fmt(e.get('iteration'))}</td><td>{_fmt(e.get('train_reward'))}</td>"
                       f"<td>{_fmt(e.get('heldout_score'))}</td><td>{_fmt(e.get('streak'))}</td></tr>"
                       for e in events if isinstance(e, dict))
        table = ("<table><tr><th>iteration</th><th>train reward</th><th>held-out score</th><th>streak</th></tr>"
                 + rows + "</table>") if rows else ""
        more = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v))[:400]}</td></tr>"
                       for k, v in extra.items())
        return (f"<div class='card alarm-on'><b>Hacking alarm: RAISED</b> <span class='muted'>the training reward "
                f"rose while the held-out score fell for {_fmt(patience)} evaluations in a row "
                f"({len(events)} firing{'s' if len(events) != 1 else ''}). Look at the grids below for "
                f"adversarial textures or over-saturation.</span>{table}"
                + (f"<table>{more}</table>" if more else "") + "</div>")
    if patience == 0:
        return "<div class='card alarm-na'><b>Hacking alarm: off</b> <span class='muted'>(alarm_patience: 0)</span></div>"
    if streaks:
        step, streak = streaks[-1]
        when = "during the whole run" if run.snapshot is not None else f"so far (last evaluation at iteration {step})"
        return (f"<div class='card alarm-off'><b>Hacking alarm: not raised</b> <span class='muted'>{when}; "
                f"current streak {_fmt(streak)} of {_fmt(patience)} diverging evaluations "
                f"(training reward up while the held-out score goes down).</span></div>")
    why = ("the alarm needs held-out tracking (track_every > 0) and this run has none logged yet"
           if patience else f"this run has no {ALARM_FILE} and logged no alarm/streak (it predates the alarm, "
           "or its trainer has none)")
    return f"<div class='card alarm-na'><b>Hacking alarm: not available.</b> <span class='muted'>{html.escape(why)}.</span></div>"


def _metrics_section(run: Run, history) -> str:
    parts = []
    if history:
        rows = []
        for k in _ordered_keys(history):
            pts = history[k]
            (s0, v0), (s1, v1) = pts[0], pts[-1]
            delta = v1 - v0
            better = _better_direction(k)  # colour only where "better" is known
            cls = "" if len(pts) < 2 or delta == 0 or better == 0 else ("up" if delta * better > 0 else "down")
            rows.append(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v0)}</td><td>{s0}</td><td>{_fmt(v1)}</td>"
                        f"<td>{s1}</td><td class='{cls}'>{'' if len(pts) < 2 else f'{delta:+.4g}'}</td></tr>")
        parts.append("<p class='muted'>First and last logged value of every metric in stats.jsonl. "
                     "<code>track/</code> metrics are held-out evaluations of the current weights "
                     "(step 0 = the starting weights).</p><table><tr><th>metric</th><th>first</th><th>at step</th>"
                     "<th>last</th><th>at step</th><th>change</th></tr>" + "".join(rows) + "</table>")
    else:
        parts.append(_na("stats.jsonl is missing or empty (the run has not logged yet)"))
    if run.evals:
        names = list(run.evals)
        keys = sorted({k for m in run.evals.values() for k, v in m.items() if isinstance(v, (int, float))})
        head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
        body = "".join(f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{_fmt(run.evals[n].get(k))}</td>" for n in names)
                       + "</tr>" for k in keys)
        parts.append("<h3>Evaluations (eval_*.json in the run folder)</h3>"
                     f"<table><tr><th>metric</th>{head}</tr>{body}</table>")
    else:
        parts.append("<p class='muted'>No eval_*.json in the run folder (write one with "
                     f"<code>rzero eval --checkpoint {html.escape(str(run.path))} --json "
                     f"{html.escape(str(run.path / 'eval_generator.json'))}</code>).</p>")
    return "".join(parts)


def _figure(png: bytes, caption: str, alt: str) -> str:
    return (f'<figure><img class="px" src="{_data_uri(png)}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _pick_grids(grids: list[tuple[int, Path]], limit: int) -> list[tuple[int, Path]]:
    """At most `limit` grids, evenly spread, always keeping the first and the last."""
    if len(grids) <= limit:
        return grids
    idx = sorted({round(i * (len(grids) - 1) / (limit - 1)) for i in range(limit)})
    return [grids[i] for i in idx]


def build_report(run_dir: str | Path, asset_dir=None, teacher: bool = True, teacher_steps: int = 25,
                 teacher_cfg: float = 7.5, max_grids: int = 12) -> str:
    """The HTML text of a run's report (see the module docstring)."""
    if max_grids < 2:
        raise ValueError(f"max_grids must be >= 2 (the first and the last grid), got {max_grids}")
    run = read_run(run_dir)
    history = metric_history(run.rows)
    title = f"rzero run report: {run.path.resolve().name}"
    sec = [f"<h1>{html.escape(title)}</h1><p class='muted'>{html.escape(str(run.path.resolve()))} · "
           f"written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
           "<nav><a href='#alarm'>alarm</a><a href='#metrics'>metrics</a><a href='#curves'>curves</a>"
           "<a href='#compare'>teacher vs generator</a><a href='#grids'>grids over training</a>"
           "<a href='#config'>config</a></nav>", _summary(run, history)]
    if run.problems:
        sec.append("<div class='card alarm-na'><b>Skipped files</b><ul>" +
                   "".join(f"<li>{html.escape(p)}</li>" for p in run.problems) + "</ul></div>")
    sec.append("<h2 id='alarm'>Reward-hacking alarm</h2>" + _alarm_section(run, history))
    sec.append("<h2 id='metrics'>Metrics</h2>" + _metrics_section(run, history))

    sec.append("<h2 id='curves'>Training curves</h2>")
    if history:
        sec += [f"<figure><img src='{_data_uri(png)}' alt='{html.escape(t)}' style='max-width:100%'>"
                f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, png in curve_figures(history)]
    else:
        sec.append(_na("nothing logged yet"))

    is_world = run.config.get("backbone", "world") == "world"
    prompts = _grid_recipe()[0] if is_world else []
    prompt_list = ("<p class='muted'>One row per prompt, one column per seed (the same start noise in every "
                   "grid):</p><ol class='prompts'>" + "".join(f"<li>{html.escape(p)}</li>" for p in prompts)
                   + "</ol>") if prompts else ""
    sec.append("<h2 id='compare'>Teacher vs generator (same prompts, same start noise)</h2>" + prompt_list)
    figs = []
    makers = [("generator", lambda: generator_grid(run, asset_dir))]
    if teacher:
        makers.insert(0, ("teacher", lambda: teacher_grid(run, asset_dir, teacher_steps, teacher_cfg)))
    # Sampling the teacher (25 steps x CFG) is the one slow part: show it with a bar and an ETA.
    for who, make in tqdm(makers, desc="report: grids", unit="grid", dynamic_ncols=True):
        try:
            png, label = make()
            figs.append(_figure(png, label, who))
        except (AssetError, ValueError, OSError, KeyError) as e:
            figs.append(f"<figure>{_na(f'{who} grid: ' + ' '.join(str(e).split()))}</figure>")
    if not teacher:
        figs.insert(0, f"<figure>{_na('teacher grid skipped (--no-teacher)')}</figure>")
    sec.append("<div class='pair'>" + "".join(figs) + "</div>")

    sec.append("<h2 id='grids'>Sample grids over training</h2>")
    if run.grids:
        shown = _pick_grids(run.grids, max_grids)
        note = "" if len(shown) == len(run.grids) else f" ({len(shown)} of {len(run.grids)} shown, evenly spaced)"
        sec.append(f"<p class='muted'>samples/step_*.png: the training weights at fixed prompts and seeds{note}."
                   "</p><div class='strip'>" +
                   "".join(_figure(p.read_bytes(), f"iteration {s}", f"grid at iteration {s}") for s, p in shown)
                   + "</div>")
    else:
        sec.append(_na("no samples/step_*.png yet"))

    sec.append("<h2 id='config'>Resolved config (config.yaml)</h2>" +
               (f"<pre>{html.escape(run.config_text)}</pre>" if run.config_text else _na("config.yaml is missing")))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>"
            + "\n".join(sec) + "</main></body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None, **kwargs) -> Path:
    """Write the report (default RUN_DIR/report.html) atomically; returns its path."""
    text = build_report(run_dir, **kwargs)
    path = Path(out) if out else Path(run_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path
