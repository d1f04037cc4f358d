"""`rzero serve`: a local web demo of a trained few-step generator beside its teacher.

One FastAPI app, one inline page (HTML, CSS and JS in this file: no CDN, no fonts, no
analytics; a Content-Security-Policy header forbids the page any other origin), and a JSON
API the page itself uses:

    GET  /             the page: prompt, seed, teacher steps, CFG, eta; images side by side
    GET  /api/info     loaded models, image size, and every request field's default and limits
    POST /api/generate {"prompt": "a red circle", "seed": 0, ...} -> PNGs as data URIs + latency
    GET  /healthz      {"ok": true}

Both models start from the same noise per seed (one noise per image index, as in
`rzero eval`), so the pictures differ only by the model and its sampler. Without a
checkpoint the page shows the teacher alone. Requests are served one at a time: torch on a
CPU gains nothing from interleaving them, and the lock keeps latencies honest.

One source of truth for the form: `GenerateRequest` declares each field's default and
bounds; /api/info serves them (`request_limits`), and the page sets every input's value,
min, max and step from that answer (step "any" for real numbers, so no value the API takes
is refused by the browser). The form does not validate in the browser (`novalidate`): a
value the API refuses goes to the server, and the page shows the server's one-line message.
"""

from __future__ import annotations

import base64
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config.schema import EvalConfig

MAX_IMAGES = 8
MAX_TEACHER_STEPS = 250  # the demo's own bound, to keep one request under a minute on a CPU
MAX_PROMPT_CHARS = 500
PROTOCOL = EvalConfig()  # the evaluation protocol's teacher sampler: the teacher's defaults here


class GenerateRequest(BaseModel):
    """Body of POST /api/generate; unknown fields are an error (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    seed: int = Field(0, ge=0, le=2**53 - 1)  # 2**53: the largest integer a JS number holds exactly
    num_images: int = Field(1, ge=1, le=MAX_IMAGES)
    steps: int = Field(PROTOCOL.steps, ge=1, le=MAX_TEACHER_STEPS, description="teacher DDIM steps")
    cfg: float = Field(PROTOCOL.cfg, ge=0.0, le=30.0, description="teacher CFG scale (1 = no guidance)")
    eta: float | None = Field(None, ge=0.0, le=1.0, description="generator re-noise eta (default: its inference eta)")
    teacher_eta: float = Field(PROTOCOL.eta, ge=0.0, le=1.0, description="teacher DDIM eta (default: the protocol's)")
    models: list[Literal["generator", "teacher"]] | None = Field(None, min_length=1)
    upscale: int = Field(8, ge=1, le=16, description="nearest-neighbour enlargement of the returned PNGs")

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the prompt is empty; type some text (an empty prompt is the unconditional model)")
        return v.strip()


def request_limits() -> dict:
    """Each request field's type and bounds, read from GenerateRequest's own JSON schema.

    {"seed": {"type": "integer", "min": 0, "max": 9007199254740991}, "cfg": {"type": "number",
    "min": 0.0, "max": 30.0}, "prompt": {"type": "string", "max_length": 500}, ...}. The page
    builds its inputs from this, so it cannot disagree with the validation that answers 422.
    """
    names = {"type": "type", "minimum": "min", "maximum": "max", "maxLength": "max_length", "minItems": "min_items"}
    out = {}
    for field, prop in GenerateRequest.model_json_schema()["properties"].items():
        # An optional field (eta, models) is anyOf [its own schema, null]: describe the former.
        spec = next((p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"), prop)
        out[field] = {new: spec[old] for old, new in names.items() if old in spec}
        if "enum" in spec.get("items", {}):
            out[field]["choices"] = spec["items"]["enum"]
    return out


def png_data_uris(images: torch.Tensor, upscale: int) -> list[str]:
    """(N, 3, H, W) in [-1, 1] -> PNG data URIs of size (H * upscale, W * upscale)."""
    from PIL import Image

    arr = ((images.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for a in arr:
        img = Image.fromarray(a)
        if upscale > 1:
            img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
        buf = BytesIO()
        img.save(buf, format="PNG")
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


class DemoModels:
    """The teacher (multi-step DDIM + CFG) and, with a checkpoint, the trained generator."""

    def __init__(self, checkpoint: str | Path | None = None, asset_dir: str | Path | None = None):
        from ..backbones import make_backbone

        self.generator, self.meta = None, {}
        if checkpoint is not None:
            from ..generator import load_generator

            self.generator, self.meta = load_generator(checkpoint, asset_dir)
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        # The teacher is the backbone the generator was trained from, with its original weights.
        self.backbone_name = self.meta.get("backbone", "world")
        self.teacher = make_backbone(self.backbone_name, asset_dir=asset_dir).eval().requires_grad_(False)
        self.lock = threading.Lock()
        with torch.no_grad():  # image size from one decode of a zero latent (cheap, backbone-agnostic)
            self.image_shape = tuple(self.teacher.decode(torch.zeros(1, *self.teacher.latent_shape)).shape[1:])

    def info(self) -> dict:
        gen = None
        if self.generator is not None:
            gen = {"method": self.meta.get("method", "generator"), "steps": self.generator.steps,
                   "inference_eta": float(self.meta.get("inference_eta", 0.0)),
                   "iteration": self.meta.get("iteration"), "checkpoint": self.checkpoint}
        # What a request that leaves a field out gets (the page's initial values).
        defaults = {name: f.default for name, f in GenerateRequest.model_fields.items() if not f.is_required()}
        defaults["eta"] = gen["inference_eta"] if gen else None
        defaults["models"] = ["generator", "teacher"] if gen else ["teacher"]
        return {"backbone": self.backbone_name, "image_size": list(self.image_shape[1:]),
                "generator": gen, "teacher": {"sampler": "DDIM + CFG"},
                "defaults": defaults, "limits": request_limits()}

    @torch.no_grad()
    def generate(self, req: GenerateRequest) -> dict:
        from ..utils.seeding import image_seed, randn_per_image

        models = req.models or (["generator", "teacher"] if self.generator is not None else ["teacher"])
        if "generator" in models and self.generator is None:
            raise ValueError("no generator is loaded; restart with `rzero serve --checkpoint RUN_DIR` "
                             "or ask for models=[\"teacher\"]")
        n = req.num_images
        prompts = [req.prompt] * n
        idx = range(n)
        noise = randn_per_image(self.teacher.latent_shape, req.seed, idx)  # the same start for both models

        def step_noise():  # per-image streams for re-noising draws, distinct from the start noise
            return [torch.Generator().manual_seed(image_seed(req.seed + 1, i)) for i in idx]

        results = []
        with self.lock:
            for model in models:
                t0 = time.perf_counter()
                if model == "generator":
                    eta = float(self.meta.get("inference_eta", 0.0)) if req.eta is None else req.eta
                    images = self.generator.sample(prompts, noise, eta, generator=step_noise())
                    steps, nfe = self.generator.steps, self.generator.steps
                    label = f"{str(self.meta.get('method', 'generator')).upper()} generator, {steps} steps, eta {eta:g}"
                else:
                    eta, steps = req.teacher_eta, req.steps
                    images = self.teacher.sample(prompts, noise, steps=steps, cfg=req.cfg, eta=eta,
                                                 generator=step_noise())
                    nfe = steps * (1 if req.cfg == 1.0 else 2)
                    label = f"teacher, {steps} DDIM steps, CFG {req.cfg:g}, eta {eta:g}"
                ms = 1000.0 * (time.perf_counter() - t0)
                results.append({"model": model, "label": label, "steps": steps, "nfe": nfe, "eta": eta,
                                "ms": round(ms, 1), "ms_per_image": round(ms / n, 1),
                                "images": png_data_uris(images, req.upscale)})
        h, w = self.image_shape[1:]
        return {"prompt": req.prompt, "seed": req.seed, "width": w * req.upscale, "height": h * req.upscale,
                "results": results}


def create_app(models: DemoModels):
    """The FastAPI app over already-loaded models (load errors surface before serving)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="rzero demo", docs_url=None, redoc_url=None, openapi_url=None)  # no CDN-backed docs

    @app.middleware("http")
    async def _offline_headers(request: Request, call_next):
        response = await call_next(request)
        # Nothing but this origin and inline code/data images: the page cannot reach the internet.
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; form-action 'none'; base-uri 'none'")
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        # One readable line ("steps: Input should be less than or equal to 250") instead of
        # pydantic's nested structure, which the page would have to take apart.
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                msg = "unknown field; see GET /api/info for the accepted ones"
            elif err.get("type") == "json_invalid":
                where, msg = "body", "not valid JSON; send an object such as {\"prompt\": \"a red circle\"}"
            parts.append(f"{where}: {msg}")
        return JSONResponse({"error": "; ".join(parts)}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(PAGE)

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    @app.get("/api/info")
    def info():
        return models.info()

    @app.post("/api/generate")
    def generate(req: GenerateRequest):
        try:
            return models.generate(req)
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=400)

    return app


def check_port_free(host: str, port: int) -> None:
    """Fail with one line before loading models if the address cannot be bound."""
    import socket

    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port} is out of range; pick one in 1..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"--host '{host}' does not resolve ({e.strerror}); use 127.0.0.1") from e
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from e


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>rzero demo</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1d2433}
main{max-width:1100px;margin:0 auto;padding:1.2rem 1.5rem 3rem}
h1{font-size:1.4rem;margin:.2rem 0}.muted{color:#5f6b7a;font-size:.88rem}
form{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:1rem;margin:1rem 0;display:grid;gap:.7rem}
.row{display:flex;gap:1rem;flex-wrap:wrap;align-items:end}
label{display:flex;flex-direction:column;font-size:.8rem;color:#5f6b7a;gap:.2rem}
input[type=text]{font-size:1rem;padding:.5rem;border:1px solid #c3c9d2;border-radius:6px;width:100%;box-sizing:border-box}
input[type=number]{width:6.5rem;padding:.35rem;border:1px solid #c3c9d2;border-radius:6px}
button{font-size:1rem;padding:.5rem 1.2rem;border:0;border-radius:6px;background:#2456a6;color:#fff;cursor:pointer}
button:disabled{background:#9aa4b2;cursor:wait}button.small{font-size:.8rem;padding:.35rem .6rem;background:#5f6b7a}
#results{display:flex;gap:1.5rem;flex-wrap:wrap}
.col{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:.8rem;flex:1 1 300px}
.col h2{font-size:1rem;margin:0 0 .2rem}.imgs{display:flex;flex-wrap:wrap;gap:.4rem;margin-top:.5rem}
.imgs img{image-rendering:pixelated;image-rendering:crisp-edges;max-width:100%;border-radius:4px}
.lat{font-variant-numeric:tabular-nums;font-weight:600}
input:invalid{border-color:#b42318;outline-color:#b42318}
#error{color:#b42318;min-height:1.2em}
</style></head><body><main>
<h1>rzero demo</h1><div class="muted" id="models">loading model information...</div>
<!-- Values, min, max and step come from /api/info (loadInfo); novalidate: the server judges. -->
<form id="form" autocomplete="off" novalidate>
  <label>Prompt<input type="text" id="prompt" name="prompt" placeholder="a small red circle on the left"></label>
  <div class="row">
    <label>Seed<input type="number" id="seed"></label>
    <button type="button" class="small" id="random-seed" title="a new random seed">random seed</button>
    <label>Images<input type="number" id="num_images"></label>
    <label>Teacher steps<input type="number" id="steps"></label>
    <label>Teacher CFG<input type="number" id="cfg"></label>
    <label>Teacher eta<input type="number" id="teacher_eta"></label>
    <label id="eta-label">Generator eta<input type="number" id="eta"></label>
    <button type="submit" id="generate" disabled>Generate</button>
  </div>
  <div id="status" class="muted" aria-live="polite"></div><div id="error" role="alert"></div>
</form>
<div id="results"></div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const NUMBER_FIELDS = ["seed", "num_images", "steps", "cfg", "teacher_eta", "eta"];  // input id = request field
let info = null;
async function loadInfo() {
  const r = await fetch("/api/info");
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  info = await r.json();
  const g = info.generator;
  $("models").textContent = (g ? `generator: ${g.method.toUpperCase()}, ${g.steps} steps` +
      (g.iteration != null ? `, ${g.iteration} training iterations` : "") + ` (${g.checkpoint}) | ` :
      "teacher only (start with --checkpoint RUN_DIR to compare a trained generator) | ") +
    `teacher: ${info.backbone} backbone, DDIM + CFG | images ${info.image_size.join("x")} px`;
  // Every default and bound is the API's (one source of truth); step "any" for real numbers, so
  // the browser never refuses a value the API accepts (an eta of 0.75 under step 0.1 once did).
  $("prompt").maxLength = info.limits.prompt.max_length;
  for (const name of NUMBER_FIELDS) {
    const el = $(name), lim = info.limits[name];
    el.min = lim.min; el.max = lim.max;
    el.step = lim.type === "integer" ? "1" : "any";
    el.value = info.defaults[name] ?? "";
  }
  if (!g) $("eta-label").style.display = "none";  // teacher only: no generator eta to send
  $("generate").disabled = false;
  document.body.dataset.info = "loaded";
}
function requestBody() {
  const body = {prompt: $("prompt").value};
  for (const name of NUMBER_FIELDS) {
    if (name === "eta" && !info.generator) continue;
    const text = $(name).value.trim();  // "" also when the browser cannot parse what was typed
    if (text === "") throw new Error(`${name}: not a number; type one (default ${info.defaults[name]})`);
    body[name] = Number(text);  // out-of-range values go as they are: the server's message names the limit
  }
  return body;
}
function column(res, width) {
  const col = document.createElement("div");
  col.className = "col"; col.dataset.model = res.model;
  const h = document.createElement("h2"); h.textContent = res.label; col.appendChild(h);
  const lat = document.createElement("div"); lat.className = "muted";
  lat.innerHTML = `latency <span class="lat"></span> (<span class="per"></span> per image, NFE ${res.nfe})`;
  lat.querySelector(".lat").textContent = `${res.ms.toFixed(0)} ms`;
  lat.querySelector(".per").textContent = `${res.ms_per_image.toFixed(0)} ms`;
  col.appendChild(lat);
  const imgs = document.createElement("div"); imgs.className = "imgs";
  res.images.forEach((src, i) => {
    const img = document.createElement("img");
    img.src = src; img.className = "result"; img.dataset.model = res.model; img.style.width = `${width}px`;
    img.alt = `${res.model} image ${i + 1}`; imgs.appendChild(img);
  });
  col.appendChild(imgs);
  return col;
}
async function generate(ev) {
  ev.preventDefault();
  if (!info) return;  // the button is enabled only once /api/info has answered
  $("error").textContent = "";
  document.body.dataset.state = "busy";
  $("generate").disabled = true;
  $("status").textContent = "generating...";
  const t0 = performance.now();
  try {
    const body = requestBody();
    const r = await fetch("/api/generate", {method: "POST", headers: {"Content-Type": "application/json"},
                                            body: JSON.stringify(body)});
    const data = await r.json().catch(() => ({}));  // a proxy's HTML error page is not JSON
    if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
    const out = $("results"); out.replaceChildren();
    // One image at up to 256 px; several at 200 px so two fit side by side in a column.
    const shown = Math.min(data.results[0].images.length > 1 ? 200 : 256, data.width);
    data.results.forEach((res) => out.appendChild(column(res, shown)));
    $("status").textContent = `done: "${data.prompt}", seed ${data.seed}; round trip ` +
      `${(performance.now() - t0).toFixed(0)} ms`;
    document.body.dataset.state = "done";
  } catch (e) {
    $("error").textContent = e.message; $("status").textContent = "";
    document.body.dataset.state = "error";
  } finally {
    $("generate").disabled = false;
  }
}
$("form").addEventListener("submit", generate);
$("random-seed").addEventListener("click", () => {
  const top = info ? Math.min(info.limits.seed.max, 1e9) : 1e9;
  $("seed").value = Math.floor(Math.random() * (top + 1));
});
loadInfo().catch((e) => { $("models").textContent = "could not load /api/info: " + e.message; });
</script></body></html>
"""
