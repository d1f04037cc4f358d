"""End to end in a real browser: `rzero serve` on loopback, driven in headless Chromium.

Starts the real command in a subprocess with a tiny trained checkpoint, starts Debian's
chromium-driver, and speaks the W3C WebDriver protocol to it over plain HTTP (the same
protocol selenium speaks; a few requests do here, so no extra Python dependency). The test
types a prompt, clicks Generate, waits for the images, decodes them, checks that the page
loaded nothing from anywhere but the server, and takes a screenshot.

Needs the apt packages `chromium` and `chromium-driver` (`make test-browser` installs them);
skipped with that reason when they are missing. Run with `pytest -m browser`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver element-reference key
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("chromium and chromium-driver are not installed: run `make test-browser` (it installs them with "
                "apt-get install -y chromium chromium-driver)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: dict | None = None, timeout: float = 60) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:  # WebDriver errors come as JSON bodies; show them
        raise AssertionError(f"{method} {url} -> {e.code}: {e.read()[:500]!r}") from None


def _wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}: "
                                 f"{proc.stdout.read()[-2000:] if proc.stdout else ''}")
        try:
            result = check()
            if result:
                return result
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class WebDriver:
    """The handful of W3C WebDriver commands this test needs."""

    def __init__(self, url: str, user_data: Path):
        caps = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,900", f"--user-data-dir={user_data}", "--no-first-run",
                     "--disable-extensions", "--disable-background-networking"]}}
        self.url = url
        self.session = _http("POST", f"{url}/session", {"capabilities": {"alwaysMatch": caps}})["value"]["sessionId"]

    def cmd(self, method: str, path: str, body: dict | None = None):
        return _http(method, f"{self.url}/session/{self.session}{path}", body)["value"]

    def find(self, css: str) -> str:
        return self.cmd("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css: str, text: str) -> None:
        el = self.find(css)
        self.cmd("POST", f"/element/{el}/clear", {})
        self.cmd("POST", f"/element/{el}/value", {"text": text})

    def js(self, script: str):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": []})

    def quit(self) -> None:
        try:
            _http("DELETE", f"{self.url}/session/{self.session}", timeout=20)
        except (AssertionError, OSError):
            pass


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(world_assets, tmp_path_factory):
    """`rzero serve --checkpoint RUN` in a subprocess on a free loopback port."""
    from rzero.config import load_config
    from rzero.config.schema import TrainConfig
    from rzero.trainers import R0Trainer

    run = tmp_path_factory.mktemp("browser") / "r0"
    cfg = load_config(TrainConfig, CONFIGS / "world_r0.yaml",
                      ["iterations=1", "batch_size=2", "track_every=0", "sample_every=1000", "threads=1"])
    R0Trainer(cfg, run, asset_dir=world_assets).fit()
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rzero.cli.main", "serve", "--checkpoint", str(run),
                             "--assets", str(world_assets), "--port", str(port), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _http("GET", f"{base}/healthz", timeout=2).get("ok"), 180, "rzero serve", proc)
        yield base
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    proc = subprocess.Popen([DRIVER, f"--port={port}", f"--log-path={log}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _http("GET", f"{url}/status", timeout=2)["value"]["ready"], 60, "chromedriver", proc)
        driver = WebDriver(url, tmp_path_factory.mktemp("chromium-profile"))
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        _stop(proc)


def _not_blank(img: Image.Image, min_std: float = 5.0) -> np.ndarray:
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert arr.std() > min_std, f"image looks blank (pixel std {arr.std():.2f})"
    return arr


def test_prompt_to_images_in_headless_chromium(server, browser, tmp_path):
    browser.cmd("POST", "/url", {"url": server + "/"})
    assert browser.cmd("GET", "/title") == "rzero demo"
    # The model line is filled from /api/info once the page's script has run.
    _wait_until(lambda: "generator: R0" in browser.js("return document.getElementById('models').textContent"),
                30, "the page to load /api/info")

    browser.type("#prompt", "a small red circle on the left")
    browser.type("#seed", "3")
    browser.type("#num_images", "2")
    browser.type("#steps", "5")  # the teacher's steps: keeps the test quick on a CPU
    browser.cmd("POST", f"/element/{browser.find('#generate')}/click", {})
    state = _wait_until(lambda: browser.js("return document.body.dataset.state || ''"), 120, "the images")
    assert state == "done", browser.js("return document.getElementById('error').textContent")

    images = browser.js("""return Array.from(document.querySelectorAll('img.result')).map(i => ({
        model: i.dataset.model, src: i.src, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))""")
    assert sorted(i["model"] for i in images) == ["generator", "generator", "teacher", "teacher"]
    decoded = {}
    for i in images:
        assert i["complete"] and (i["w"], i["h"]) == (256, 256)  # 32 x 32 world images, shown 8x
        img = Image.open(BytesIO(base64.b64decode(i["src"].split(",", 1)[1])))
        assert img.format == "PNG" and img.size == (256, 256)
        decoded.setdefault(i["model"], []).append(_not_blank(img))
    assert not np.array_equal(decoded["generator"][0], decoded["teacher"][0])

    latencies = browser.js("return Array.from(document.querySelectorAll('.lat')).map(e => e.textContent)")
    assert len(latencies) == 2 and all(t.endswith(" ms") and t[:-3].isdigit() for t in latencies)
    status = browser.js("return document.getElementById('status').textContent")
    assert "seed 3" in status

    # Offline: everything the page loaded came from the server itself (or inline data).
    resources = browser.js("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(r.startswith(server) or r.startswith("data:") for r in resources), resources

    shot = base64.b64decode(browser.cmd("GET", "/screenshot"))
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    path = tmp_path / "rzero_serve.png"
    path.write_bytes(shot)
    keep = os.environ.get("RZERO_BROWSER_SCREENSHOT")  # e.g. to attach it to a CI run
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, keep)
    screen = Image.open(path)
    screen.load()
    assert screen.size[0] >= 800 and screen.size[1] >= 600
    arr = _not_blank(screen)
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 50  # text, controls and pictures, not one flat colour


def test_bad_input_shows_the_error_in_the_page(server, browser):
    browser.cmd("POST", "/url", {"url": server + "/"})
    _wait_until(lambda: "generator" in browser.js("return document.getElementById('models').textContent"),
                30, "the page to load /api/info")
    browser.type("#prompt", "a blue square")
    browser.type("#steps", "999")  # over the demo's limit: the server answers 422 with a message
    browser.js("document.getElementById('steps').removeAttribute('max')")  # let the request reach the server
    browser.cmd("POST", f"/element/{browser.find('#generate')}/click", {})
    state = _wait_until(lambda: browser.js("return document.body.dataset.state || ''"), 60, "the error")
    assert state == "error"
    assert "steps" in browser.js("return document.getElementById('error').textContent")
