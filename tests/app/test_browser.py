"""The web demo in a real browser: ``python -m export3d.app`` served on a free local port, driven by headless Chromium.

Needs the ``app`` extra (Gradio, Playwright) and Debian's Chromium at /usr/bin/chromium, which Playwright launches
as it is (``playwright install`` is never run): ``make setup-app``, then as root ``apt-get install chromium``, then
``.venv/bin/python -m pytest tests/app/test_browser.py``. ``.ci/run`` installs both; without them this module is
skipped with a message saying so.

The server runs in its own process with a Python audit hook that reports any connection or name lookup beyond this
machine; the page's own requests are recorded too: nothing may leave 127.0.0.1. ``EXPORT3D_APP_SCREENSHOT=PATH``
also saves a small screenshot of the page after the run (docs/app.png is made this way).
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export3d.animation.video import VideoReader, has_audio
from export3d.app.examples import write_example_clip, write_example_photo
from tests.evaluation.test_evaluate import write_checkpoint

HOW = "the browser test needs the app extra and Chromium: make setup-app; apt-get install chromium (as root)"
pytest.importorskip("gradio", reason=HOW)
sync_api = pytest.importorskip("playwright.sync_api", reason=HOW)
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no {CHROMIUM}: {HOW}")

ROOT = Path(__file__).resolve().parents[2]
FRAMES, FPS = 6, 12.0
# Playwright adds --headless and a new empty --user-data-dir; these keep Chromium's own traffic off the network
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
START_TIMEOUT = 240.0  # s: model, face tools and example clip on a busy 2-core machine
RUN_TIMEOUT_MS = 180_000
# The server's process, with an audit hook that reports every connection and name lookup beyond this machine.
LAUNCH = """
import sys
LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "", None}
def outbound(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple) and args[1][0] not in LOCAL:
        print(f"OUTBOUND connection to {args[1]}", file=sys.stderr, flush=True)
    elif event == "socket.getaddrinfo" and args[0] not in LOCAL:
        print(f"OUTBOUND name lookup of {args[0]}", file=sys.stderr, flush=True)
sys.addaudithook(outbound)
from export3d.app.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Server:
    url: str
    workdir: Path
    process: subprocess.Popen
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_server")
    checkpoint = write_checkpoint(root / "run", expression_dim=52)
    log = root / "server.log"
    command = [sys.executable, "-c", LAUNCH, "--checkpoint", str(checkpoint), "--port", str(free_port()),
               "--threads", "1"]  # fmt: skip
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    while not (found := re.search(r"serving the Export3D demo at (\S+) .* go to (\S+), removed", log.read_text())):
        assert process.poll() is None, f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the server did not start in {START_TIMEOUT:.0f} s:\n{log.read_text()}"
        time.sleep(0.5)
    yield Server(found[1], Path(found[2]), process, log)
    if process.poll() is None:
        process.terminate()
        process.wait(60)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A new tab on the page; every URL it requests is kept in ``page.requested``."""
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    tab.requested = []
    tab.on("request", lambda request: tab.requested.append(request.url))
    tab.goto(server.url)
    tab.wait_for_selector("#animate", timeout=60_000)
    yield tab
    tab.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser_inputs")
    return write_example_photo(root / "astronaut.png"), write_example_clip(root / "talk.mp4", FRAMES, FPS)


def upload(page, element: str, path: Path) -> None:
    """Put ``path`` into the file box ``#element`` (after clearing what it holds)."""
    clear = page.locator(f"#{element} button[aria-label='Clear']")
    if clear.count():
        clear.click()
    page.locator(f"#{element} input[type=file]").set_input_files(str(path))


def animation_frames(page, tmp_path: Path) -> tuple[int, bool]:
    """Press Animate, wait for the video and download it: (its frame count, whether it has sound)."""
    old = page.locator("#animation video").get_attribute("src") if page.locator("#animation video").count() else None
    page.click("#animate")
    page.wait_for_function("old => { const v = document.querySelector('#animation video'); "
                           "return v && v.getAttribute('src') && v.getAttribute('src') !== old; }", arg=old,
                           timeout=RUN_TIMEOUT_MS)  # fmt: skip
    response = page.request.get(page.locator("#animation video").get_attribute("src"))
    assert response.ok
    video = tmp_path / f"downloaded_{time.monotonic_ns()}.mp4"
    video.write_bytes(response.body())
    return VideoReader(video).count_frames(), has_audio(video)


def edit_time(page, words: str) -> float:
    """Wait until the last edit's line says ``words``; its time in ms."""
    page.wait_for_function("words => document.querySelector('#edit-time textarea').value.includes(words)", arg=words,
                           timeout=60_000)  # fmt: skip
    return float(re.match(r"(\d+) ms", page.locator("#edit-time textarea").input_value())[1])


def set_slider(page, element: str, value: float) -> None:
    box = page.locator(f"#{element} input[type=number]")
    box.fill(f"{value:g}")
    box.press("Enter")


def toast(page, text: str) -> None:
    page.locator(".toast-body", has_text=text).first.wait_for(timeout=60_000)


def close_toasts(page) -> None:
    page.locator("[data-testid=toast-close]").evaluate_all("buttons => buttons.forEach(b => b.click())")
    page.wait_for_function("() => !document.querySelector('[data-testid=toast-close]')", timeout=30_000)


def test_a_photo_animated_by_an_uploaded_clip_in_the_browser(server, page, inputs, tmp_path):
    photo, clip = inputs
    upload(page, "photo", photo)
    first = edit_time(page, "tri-plane generated")  # the photo is encoded and shown in the edit panel at once
    upload(page, "driving", clip)
    frames, sound = animation_frames(page, tmp_path)
    assert frames == FRAMES and sound  # one frame per driving frame, with the driver's sound
    page.locator("#crop img").wait_for()
    page.locator("#signal img").wait_for()  # the matplotlib figure
    assert page.locator("#summary textarea").input_value().startswith(f"{FRAMES} frames, 512x512 px, 12 fps, with")
    # the edits: a view renders the cached tri-plane, a basis factor makes a new one from the cached features
    set_slider(page, "yaw", 20)
    view = edit_time(page, "rendered from the cached tri-plane")
    set_slider(page, "basis-1", 3)
    basis = edit_time(page, "tri-plane generated")
    print(f"edit times on the server: first view {first:.0f} ms, yaw {view:.0f} ms, basis {basis:.0f} ms")
    if os.environ.get("EXPORT3D_APP_SCREENSHOT"):
        page.evaluate("window.scrollTo(0, 0)")
        shot = Image.open(io.BytesIO(page.screenshot(full_page=True)))
        shot = shot.crop((0, 0, shot.width, min(shot.height, 1240))).convert("RGB")
        shot.resize((shot.width * 3 // 4, shot.height * 3 // 4), Image.Resampling.LANCZOS).quantize(256).save(
            os.environ["EXPORT3D_APP_SCREENSHOT"], optimize=True)  # fmt: skip
    outside = [url for url in page.requested if not url.startswith((server.url, "data:", "blob:"))]
    assert not outside, f"the page fetched from elsewhere: {outside}"


def test_a_file_that_is_not_an_image_shows_the_error_and_the_next_request_works(server, page, inputs, tmp_path):
    photo, clip = inputs
    (tmp_path / "notes.png").write_text("this is a text file, not an image\n")
    upload(page, "photo", tmp_path / "notes.png")
    toast(page, "export3d.app: error: photo: cannot read notes.png as an image (cannot identify image file")
    upload(page, "driving", clip)
    page.click("#animate")  # the same message again, from the animation's read (Gradio groups the two in one toast)
    page.wait_for_function("() => [...document.querySelectorAll('.toast-body')].map(t => t.textContent).join('')"
                           ".split('cannot read notes.png').length > 2", timeout=60_000)  # fmt: skip
    close_toasts(page)
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(tmp_path / "wall.png")
    upload(page, "photo", tmp_path / "wall.png")
    toast(page, "export3d.app: error: --source: no face found in wall.png; faces were searched from")
    close_toasts(page)
    upload(page, "photo", photo)  # the next request works: the server went on serving
    assert animation_frames(page, tmp_path) == (FRAMES, True)
    assert server.process.poll() is None


def test_the_server_stops_on_sigterm_and_removes_its_folder(server):
    assert server.workdir.is_dir()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(60) == 0
    log = server.log.read_text()
    assert not server.workdir.exists() and f"stopped; removed {server.workdir}" in log
    assert "OUTBOUND" not in log, [line for line in log.splitlines() if "OUTBOUND" in line]
