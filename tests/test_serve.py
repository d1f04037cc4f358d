"""`rzero serve`: the JSON API on a tiny trained checkpoint, its errors, and a real uvicorn on loopback."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rzero.cli.main import main
from rzero.config import load_config
from rzero.config.schema import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def checkpoint(world_assets, tmp_path_factory) -> Path:
    from rzero.trainers import R0Trainer

    out = tmp_path_factory.mktemp("serve") / "r0"
    cfg = load_config(TrainConfig, CONFIGS / "world_r0.yaml",
                      ["iterations=1", "batch_size=2", "track_every=0", "sample_every=1000", "threads=1"])
    R0Trainer(cfg, out, asset_dir=world_assets).fit()
    return out


@pytest.fixture(scope="module")
def models(checkpoint, world_assets):
    from rzero.apps.serve import DemoModels

    return DemoModels(checkpoint, world_assets)


@pytest.fixture(scope="module")
def client(models):
    from starlette.testclient import TestClient

    from rzero.apps.serve import create_app

    return TestClient(create_app(models))


def decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    raw = base64.b64decode(uri.split(",", 1)[1])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(BytesIO(raw))
    img.load()
    assert img.mode == "RGB"
    return np.asarray(img)


def test_generate_returns_pngs_of_the_right_size(client):
    r = client.post("/api/generate", json={"prompt": "a red circle", "seed": 7, "num_images": 2, "steps": 3,
                                           "upscale": 4})
    assert r.status_code == 200, r.text
    data = r.json()
    assert (data["width"], data["height"]) == (128, 128) and data["prompt"] == "a red circle"
    by_model = {res["model"]: res for res in data["results"]}
    assert set(by_model) == {"generator", "teacher"}
    assert by_model["generator"]["nfe"] == 4 and by_model["teacher"]["nfe"] == 6  # 3 steps x CFG
    for res in data["results"]:
        assert res["ms"] > 0 and len(res["images"]) == 2
        for uri in res["images"]:
            arr = decode(uri)
            assert arr.shape == (128, 128, 3)
            assert arr.std() > 5  # not a blank image
            # Nearest-neighbour upscaling: every 4x4 block is one source pixel.
            assert (arr[::4, ::4] == arr[3::4, 3::4]).all()
    gen = decode(by_model["generator"]["images"][0])
    assert not np.array_equal(gen, decode(by_model["teacher"]["images"][0]))


def test_same_seed_same_images_and_the_noise_recipe(client, models):
    # eta 0: the generator is then a function of the start noise alone (eta > 0 also draws
    # per-image re-noise streams; same-seed equality above covers those).
    body = {"prompt": "a blue square", "seed": 11, "models": ["generator"], "upscale": 1, "num_images": 2,
            "eta": 0.0}
    a = client.post("/api/generate", json=body).json()["results"][0]["images"]
    b = client.post("/api/generate", json=body).json()["results"][0]["images"]
    c = client.post("/api/generate", json={**body, "seed": 12}).json()["results"][0]["images"]
    assert a == b and a != c
    # The page's images are the generator's output for the documented per-image noise.
    from rzero.utils.seeding import randn_per_image

    noise = randn_per_image(models.generator.backbone.latent_shape, 11, range(2))
    ref = models.generator.sample(["a blue square"] * 2, noise, 0.0, generator=torch.Generator().manual_seed(5))
    expect = ((ref.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(decode(a[1]), expect[1])


@pytest.mark.parametrize("body, field", [
    ({"prompt": "   "}, "prompt is empty"),
    ({}, "prompt: Field required"),
    ({"prompt": "x", "steps": 0}, "steps:"),
    ({"prompt": "x", "steps": 100000}, "steps:"),
    ({"prompt": "x", "num_images": 9}, "num_images:"),
    ({"prompt": "x", "eta": 1.5}, "eta:"),
    ({"prompt": "x", "seed": -1}, "seed:"),
    ({"prompt": "x", "models": ["vae"]}, "models"),
    ({"prompt": "x", "stepz": 4}, "stepz: unknown field"),
    ({"prompt": "x" * 501}, "prompt:"),
])
def test_bad_inputs_are_422_with_a_clear_message(client, body, field):
    r = client.post("/api/generate", json=body)
    assert r.status_code == 422
    assert field in r.json()["error"]


def test_body_that_is_not_json(client):
    r = client.post("/api/generate", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]


def test_page_and_info_work_offline(client):
    r = client.get("/")
    assert r.status_code == 200
    page = r.text
    assert 'id="prompt"' in page and 'id="generate"' in page and "/api/generate" in page
    assert "http://" not in page and "https://" not in page  # no CDN, fonts or analytics
    assert "default-src 'none'" in r.headers["content-security-policy"]
    info = client.get("/api/info").json()
    assert info["generator"]["steps"] == 4 and info["image_size"] == [32, 32]


def test_info_defaults_and_limits_are_the_validations_own(client, checkpoint):
    from pydantic import ValidationError

    from rzero.config.schema import EvalConfig
    from rzero.generator.load import read_meta, resolve_snapshot
    from rzero.apps.serve import GenerateRequest

    info = client.get("/api/info").json()
    d, lim = info["defaults"], info["limits"]
    # The teacher at the evaluation protocol's sampler (eta 0, not 1); the generator at its own eta.
    protocol = EvalConfig()
    assert (d["steps"], d["cfg"], d["teacher_eta"]) == (protocol.steps, protocol.cfg, protocol.eta) == (25, 7.5, 0.0)
    assert d["eta"] == read_meta(resolve_snapshot(checkpoint))["inference_eta"] == 0.75  # the R0 preset's
    assert d["models"] == ["generator", "teacher"] and d["seed"] == 0 and d["num_images"] == 1
    assert lim["prompt"] == {"type": "string", "max_length": 500}
    assert lim["seed"] == {"type": "integer", "min": 0, "max": 2**53 - 1}
    assert lim["eta"] == lim["teacher_eta"] == {"type": "number", "min": 0.0, "max": 1.0}
    assert lim["models"]["choices"] == ["generator", "teacher"]
    numeric = [f for f, spec in lim.items() if spec["type"] in ("integer", "number")]
    assert sorted(numeric) == sorted(["seed", "num_images", "steps", "cfg", "eta", "teacher_eta", "upscale"])
    # Every default is accepted, and so is each bound, and a real number between two "steps";
    # one unit (integer) or a hair (number) outside a bound is refused, naming the field.
    GenerateRequest(prompt="x", **{f: d[f] for f in numeric})
    for f in numeric:
        spec = lim[f]
        outside = 1 if spec["type"] == "integer" else 1e-6
        inside = [spec["min"], spec["max"]] + ([] if spec["type"] == "integer" else [spec["min"] + 0.123457])
        for v in inside:
            assert getattr(GenerateRequest(prompt="x", **{f: v}), f) == v
        for v in (spec["min"] - outside, spec["max"] + outside):
            with pytest.raises(ValidationError, match=f):
                GenerateRequest(prompt="x", **{f: v})
    with pytest.raises(ValidationError):
        GenerateRequest(prompt="x" * (lim["prompt"]["max_length"] + 1))


def test_the_page_repeats_no_default_or_limit(client):
    # One source of truth: the page's number inputs carry no value, min, max or step of their own
    # (its script sets them from /api/info), and each is a numeric field of the API.
    import re

    page, lim = client.get("/").text, client.get("/api/info").json()["limits"]
    inputs = re.findall(r"<input\b[^>]*>", page)
    assert len(inputs) == 7  # the prompt and six numbers
    for tag in inputs:
        assert not re.search(r"\b(value|min|max|step|maxlength|required)=", tag), tag
        field = re.search(r'id="(\w+)"', tag).group(1)
        assert field in lim, tag
        if 'type="number"' in tag:
            assert lim[field]["type"] in ("integer", "number")
    assert re.search(r'<form id="form"[^>]*\bnovalidate\b', page)  # the server judges, the page shows its words
    assert 'el.step = lim.type === "integer" ? "1" : "any"' in page


def test_teacher_only_server(world_assets):
    from starlette.testclient import TestClient

    from rzero.apps.serve import DemoModels, create_app

    c = TestClient(create_app(DemoModels(None, world_assets)))
    assert c.get("/api/info").json()["generator"] is None
    data = c.post("/api/generate", json={"prompt": "one cross", "steps": 2, "upscale": 2}).json()
    assert [res["model"] for res in data["results"]] == ["teacher"]
    assert decode(data["results"][0]["images"][0]).shape == (64, 64, 3)
    r = c.post("/api/generate", json={"prompt": "one cross", "models": ["generator"]})
    assert r.status_code == 400 and "--checkpoint" in r.json()["error"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_uvicorn_on_loopback(models):
    import uvicorn

    from rzero.apps.serve import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(models), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started:
            assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/generate", method="POST",
                                     data=json.dumps({"prompt": "a green diamond", "models": ["generator"]}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            data = json.loads(resp.read())
        assert decode(data["results"][0]["images"][0]).shape == (256, 256, 3)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path / "nope"), "--port", str(_free_port())]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", "--port", str(busy.getsockname()[1])]) == 1
    assert "pick another --port" in capsys.readouterr().err
    assert main(["serve", "--port", "70000"]) == 1
    assert "out of range" in capsys.readouterr().err
