"""End to end in a real browser: `rzero serve` on loopback, driven in headless Chromium.

Starts the real command in a subprocess with a tiny generator snapshot (the world teacher's
weights as a 4-step generator at the R0 preset's inference eta), starts Debian's
chromium-driver, and speaks the W3C WebDriver protocol to it over plain HTTP (the same
protocol selenium speaks; a few requests do here, so no extra Python dependency).

Per control of the form: it starts at /api/info's default inside /api/info's limits, a
Generate at the defaults and at another value the API accepts shows images (and the page
sent exactly that value), and a value the API refuses shows the server's own message in
the page. The defaults test also decodes the images, compares them with the API's answer for
the same request, checks that the page loaded nothing from elsewhere and takes a screenshot.

Needs the apt packages `chromium` and `chromium-driver` (`make test-browser` installs them).
Without them the tests are skipped with that reason, except under RZERO_REQUIRE_BROWSER=1
(set by `make test-browser`, so in CI), where a missing browser fails them.
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
NUMBER_FIELDS = ["seed", "num_images", "steps", "cfg", "teacher_eta", "eta"]  # the page's numeric inputs


@pytest.fixture(scope="module", autouse=True)
def _chromium_present():
    """Skip without a browser; under RZERO_REQUIRE_BROWSER=1 (make test-browser, CI) fail instead."""
    if CHROMIUM is not None and DRIVER is not None:
        return
    msg = ("chromium and chromium-driver are not installed: run `make test-browser` (it installs them with "
           "apt-get install -y chromium chromium-driver)")
    if os.environ.get("RZERO_REQUIRE_BROWSER") == "1":
        pytest.fail(msg + "; RZERO_REQUIRE_BROWSER=1 turns this skip into a failure", pytrace=False)
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: dict | None = None, timeout: float = 120) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:  # WebDriver errors come as JSON bodies; show them
        raise AssertionError(f"{method} {url} -> {e.code}: {e.read()[:500]!r}") from None


def _api(base: str, body: dict) -> tuple[int, dict]:
    """POST /api/generate straight to the server: (status, answer), errors included."""
    req = urllib.request.Request(f"{base}/api/generate", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


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
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class WebDriver:
    """The handful of W3C WebDriver commands these tests need."""

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

    def js(self, script: str, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def quit(self) -> None:
        try:
            _http("DELETE", f"{self.url}/session/{self.session}", timeout=20)
        except (AssertionError, OSError):
            pass


class Page:
    """The demo page in the browser: open it, fill inputs as a user types, press Generate."""

    def __init__(self, driver: WebDriver, base: str):
        self.driver, self.base = driver, base

    def open(self) -> Page:
        self.driver.cmd("POST", "/url", {"url": self.base + "/"})
        assert self.driver.cmd("GET", "/title") == "rzero demo"
        _wait_until(lambda: self.driver.js("return document.body.dataset.info === 'loaded'"), 30,
                    "the page to load /api/info")
        # Record each request body the page sends (a wrapper around its fetch; the page is unchanged).
        self.driver.js("""window.sentBodies = []; const f = window.fetch.bind(window);
            window.fetch = (url, opts) => { if (opts && opts.body) window.sentBodies.push(JSON.parse(opts.body));
                                            return f(url, opts); };""")
        return self

    def value(self, field: str) -> str:
        return self.driver.js("return document.getElementById(arguments[0]).value", field)

    def type(self, field: str, text: str) -> None:
        el = self.driver.find(f"#{field}")
        self.driver.cmd("POST", f"/element/{el}/clear", {})
        if text:
            self.driver.cmd("POST", f"/element/{el}/value", {"text": text})
        assert self.value(field) == text, f"#{field} holds {self.value(field)!r} after typing {text!r}"

    def input_state(self, field: str) -> dict:
        return self.driver.js("""const el = document.getElementById(arguments[0]);
            return {min: el.min, max: el.max, step: el.step, value: el.value, valid: el.checkValidity(),
                    shown: el.offsetParent !== null};""", field)

    def click(self, css: str) -> None:
        self.driver.cmd("POST", f"/element/{self.driver.find(css)}/click", {})

    def generate(self, timeout: float = 180) -> str:
        """Press Generate; 'done' or 'error' once the page has the answer."""
        self.driver.js("document.body.dataset.state = ''")
        self.click("#generate")
        try:  # the page marks itself busy as soon as the form submits
            _wait_until(lambda: self.driver.js("return document.body.dataset.state"), 5, "Generate to submit")
        except AssertionError:
            blocked = self.driver.js("return Array.from(document.querySelectorAll('input'))"
                                     ".filter(e => !e.checkValidity()).map(e => `${e.id}: ${e.validationMessage}`)")
            raise AssertionError(f"Generate did nothing: the form did not submit (browser validation: {blocked})")
        return _wait_until(lambda: self.driver.js(
            "const s = document.body.dataset.state; return s === 'done' || s === 'error' ? s : ''"),
            timeout, "the page's answer")

    def error(self) -> str:
        return self.driver.js("return document.getElementById('error').textContent")

    def sent(self) -> list[dict]:
        return self.driver.js("return window.sentBodies")

    def images(self) -> list[dict]:
        return self.driver.js("""return Array.from(document.querySelectorAll('img.result')).map(i => ({
            model: i.dataset.model, src: i.src, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))""")

    def labels(self) -> dict:
        return {c["model"]: c["label"] for c in self.driver.js(
            "return Array.from(document.querySelectorAll('.col')).map(c => "
            "({model: c.dataset.model, label: c.querySelector('h2').textContent}))")}


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _serve(args: list[str], world_assets: Path):
    """`rzero serve ARGS` on a free loopback port, up and answering: (process, base URL)."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    threads = os.environ.get("RZERO_TEST_THREADS", "2")
    proc = subprocess.Popen([sys.executable, "-m", "rzero.cli.main", "serve", *args, "--assets", str(world_assets),
                             "--port", str(port), "--threads", threads],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _http("GET", f"{base}/healthz", timeout=2).get("ok"), 180, "rzero serve", proc)
    except BaseException:
        _stop(proc)
        raise
    return proc, base


@pytest.fixture(scope="module")
def inference_eta() -> float:
    """The R0 preset's inference eta (0.75 when step="0.1" blocked the form)."""
    from rzero.config import load_config
    from rzero.config.schema import TrainConfig

    return load_config(TrainConfig, CONFIGS / "world_r0.yaml", []).generator.inference_eta


@pytest.fixture(scope="module")
def server(world_assets, tmp_path_factory, inference_eta):
    """`rzero serve --checkpoint RUN` where RUN holds the teacher's weights as an R0 snapshot."""
    from rzero.backbones import WorldBackbone
    from rzero.utils.io import atomic_save_safetensors

    run = tmp_path_factory.mktemp("browser") / "r0"
    (run / "final").mkdir(parents=True)
    unet = WorldBackbone(asset_dir=world_assets).unet
    atomic_save_safetensors(dict(unet.named_parameters()), run / "final" / "generator.safetensors")
    (run / "final" / "generator.json").write_text(json.dumps(
        {"backbone": "world", "method": "r0", "steps": 4, "inference_eta": inference_eta, "iteration": 0}))
    proc, base = _serve(["--checkpoint", str(run)], world_assets)
    try:
        yield base
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def info(server) -> dict:
    return _http("GET", f"{server}/api/info")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    proc = subprocess.Popen([DRIVER, f"--port={port}", f"--log-path={log}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _http("GET", f"{url}/status", timeout=2)["value"]["ready"], 60, "chromedriver", proc)
        wd = WebDriver(url, tmp_path_factory.mktemp("chromium-profile"))
        try:
            yield wd
        finally:
            wd.quit()
    finally:
        _stop(proc)


@pytest.fixture
def page(driver, server) -> Page:
    return Page(driver, server).open()


def _expected_body(info: dict, typed: dict) -> dict:
    """What the page should send: every numeric field at /api/info's default but those typed."""
    return {**{f: info["defaults"][f] for f in NUMBER_FIELDS}, **typed}


def _not_blank(img: Image.Image, min_std: float = 5.0) -> np.ndarray:
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert arr.std() > min_std, f"image looks blank (pixel std {arr.std():.2f})"
    return arr


def test_every_input_starts_at_the_api_default_within_the_api_limits(page, info, inference_eta):
    from rzero.config.schema import EvalConfig

    # The two values this page once got wrong: the protocol's teacher eta (0) and the generator's
    # own inference eta (0.75 for the R0 preset, which step="0.1" refused).
    assert info["defaults"]["teacher_eta"] == EvalConfig().eta == 0.0
    assert info["defaults"]["eta"] == inference_eta
    for field in NUMBER_FIELDS:
        lim, state = info["limits"][field], page.input_state(field)
        assert float(state["value"]) == info["defaults"][field], (field, state)
        assert (float(state["min"]), float(state["max"])) == (lim["min"], lim["max"]), (field, state)
        assert state["step"] == ("1" if lim["type"] == "integer" else "any"), (field, state)
        assert state["valid"] and state["shown"], (field, state)
    assert page.driver.js("return document.getElementById('prompt').maxLength") == info["limits"]["prompt"]["max_length"]
    assert page.driver.js("return document.getElementById('form').checkValidity()")


def test_generate_at_the_defaults_shows_the_apis_images(page, info, server, tmp_path):
    prompt = "a small red circle on the left"
    page.type("prompt", prompt)
    assert page.generate() == "done", page.error()
    sent = page.sent()
    assert sent == [_expected_body(info, {"prompt": prompt})]

    images = page.images()
    assert sorted(i["model"] for i in images) == ["generator", "teacher"]
    status, answer = _api(server, sent[0])  # the same request straight to the API: the same pictures
    assert status == 200
    assert {r["model"]: r["images"] for r in answer["results"]} == {i["model"]: [i["src"]] for i in images}
    decoded = {}
    for i in images:
        assert i["complete"] and (i["w"], i["h"]) == (256, 256)  # 32 x 32 world images, shown 8x
        img = Image.open(BytesIO(base64.b64decode(i["src"].split(",", 1)[1])))
        assert img.format == "PNG" and img.size == (256, 256)
        decoded[i["model"]] = _not_blank(img)
    assert not np.array_equal(decoded["generator"], decoded["teacher"])
    labels = page.labels()
    assert f"eta {info['defaults']['eta']:g}" in labels["generator"]
    d = info["defaults"]
    assert labels["teacher"] == f"teacher, {d['steps']} DDIM steps, CFG {d['cfg']:g}, eta {d['teacher_eta']:g}"

    latencies = page.driver.js("return Array.from(document.querySelectorAll('.lat')).map(e => e.textContent)")
    assert len(latencies) == 2 and all(t.endswith(" ms") and t[:-3].isdigit() for t in latencies)
    status_line = page.driver.js("return document.getElementById('status').textContent")
    assert "seed 0" in status_line and "round trip" in status_line

    # Offline: everything the page loaded came from the server itself (or inline data).
    resources = page.driver.js("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(r.startswith(server) or r.startswith("data:") for r in resources), resources

    shot = base64.b64decode(page.driver.cmd("GET", "/screenshot"))
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


# A value other than the default that the API accepts, per control, and what the answer then says.
# The real numbers are not multiples of any step a form might have used (the old ones were 0.1 / 0.5).
ACCEPTED = [
    ("prompt", "a large blue square", lambda labels, status: '"a large blue square"' in status),
    ("seed", "987654321", lambda labels, status: "seed 987654321" in status),
    ("num_images", "2", None),  # checked by counting the images
    ("steps", "7", lambda labels, status: "7 DDIM steps" in labels["teacher"]),
    ("cfg", "2.25", lambda labels, status: "CFG 2.25" in labels["teacher"]),
    ("teacher_eta", "0.35", lambda labels, status: labels["teacher"].endswith("eta 0.35")),
    ("eta", "0.125", lambda labels, status: labels["generator"].endswith("eta 0.125")),
]


@pytest.mark.parametrize("field, text, shows", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_a_non_default_value_the_api_accepts_gives_images(page, info, field, text, shows):
    if field != "prompt":
        page.type("prompt", "a small red circle on the left")
    page.type(field, text)
    assert page.input_state(field)["valid"], f"the browser flags {field}={text}, which the API accepts"
    assert page.generate() == "done", page.error()
    value = text if field == "prompt" else json.loads(text)
    typed = {"prompt": "a small red circle on the left", field: value}
    assert page.sent() == [_expected_body(info, typed)]
    images = page.images()
    per_model = int(text) if field == "num_images" else 1
    assert sorted(i["model"] for i in images) == ["generator"] * per_model + ["teacher"] * per_model
    for i in images:
        assert i["complete"] and i["w"] == 256
        _not_blank(Image.open(BytesIO(base64.b64decode(i["src"].split(",", 1)[1]))))
    if shows is not None:
        status = page.driver.js("return document.getElementById('status').textContent")
        assert shows(page.labels(), status), (page.labels(), status)


def test_random_seed_button_sets_a_seed_that_generates(page, info):
    page.type("prompt", "one green diamond")
    seeds = set()
    for _ in range(3):
        page.click("#random-seed")
        state = page.input_state("seed")
        assert state["valid"] and float(state["value"]).is_integer()
        assert info["limits"]["seed"]["min"] <= int(state["value"]) <= info["limits"]["seed"]["max"]
        seeds.add(state["value"])
    assert len(seeds) > 1  # three draws from a billion values
    assert page.generate() == "done", page.error()
    assert page.sent()[0]["seed"] == int(state["value"])
    assert f"seed {state['value']}" in page.driver.js("return document.getElementById('status').textContent")


# A value the API refuses, per control: the page sends it and shows the server's own message.
REFUSED = [
    ("prompt", "   "),
    ("seed", "-1"),
    ("seed", "2.5"),
    ("num_images", "9"),
    ("steps", "0"),
    ("steps", "251"),
    ("cfg", "30.5"),
    ("teacher_eta", "1.5"),
    ("eta", "-0.25"),
]


@pytest.mark.parametrize("field, text", REFUSED, ids=[f"{f}={t.strip() or 'blank'}" for f, t in REFUSED])
def test_a_value_the_api_refuses_shows_the_servers_message(page, info, server, field, text):
    if field != "prompt":
        page.type("prompt", "a blue square")
        page.type(field, text)
        assert not page.input_state(field)["valid"]  # flagged in the page (red border), not blocked
    else:
        page.type(field, text)
    assert page.generate() == "error"
    sent = page.sent()
    assert len(sent) == 1 and sent[0][field] == (text if field == "prompt" else json.loads(text))
    status, answer = _api(server, sent[0])
    assert status == 422 and answer["error"].startswith(f"{field}: ")
    assert page.error() == answer["error"]  # the server's message, word for word
    assert page.images() == []


def test_an_empty_number_field_says_so_without_asking_the_server(page, info):
    page.type("prompt", "a blue square")
    page.type("steps", "")
    assert page.generate() == "error"
    assert page.sent() == []
    assert page.error() == f"steps: not a number; type one (default {info['defaults']['steps']})"
    page.type("steps", "3")  # and the form recovers
    assert page.generate() == "done", page.error()


def test_teacher_only_page_hides_the_generator_eta(driver, world_assets):
    proc, base = _serve([], world_assets)
    try:
        page = Page(driver, base).open()
        assert not page.input_state("eta")["shown"]
        assert "teacher only" in driver.js("return document.getElementById('models').textContent")
        page.type("prompt", "a red circle")
        page.type("steps", "5")
        assert page.generate() == "done", page.error()
        assert "eta" not in page.sent()[0]
        assert [i["model"] for i in page.images()] == ["teacher"]
    finally:
        _stop(proc)
