"""The web page of ``mmdiff serve``: its handlers in-process, the page in a real browser (Debian's
chromium driven by playwright), and many users at once through gradio_client.

The browser and load tests start ``python -m mmdiff.cli serve`` on a free loopback port, as a user
would, and keep screenshots under the folder they print (``$MMDIFF_TEST_ARTIFACTS``, default
``outputs/test-artifacts``). Chromium comes from Debian (``make test`` installs it): without it
these tests fail, they never skip.
"""
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import gradio as gr
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradio_client import Client
from PIL import Image
from playwright.sync_api import sync_playwright

from mmdiff.cli.inputs import load_pipeline
from mmdiff.eval.digits import classify, video_scores
from mmdiff.media import read_video
from mmdiff.ui.handlers import Handlers

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("MMDIFF_TEST_ARTIFACTS", ROOT / "outputs" / "test-artifacts")) / "ui"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
START_S = 120  # a server that is not answering after this has failed
# (model, dtype, labels, sampler, steps, guidance, seed, picture, strength, mask): 10 steps with
# guidance 2 draw the asked digit for 100 of 100 seeds
IMAGE = ("", "float32", "3", "dpmpp_2m", 10, 2.0, 0, None, 0.6, None)


class Progress:
    """Records what a handler reports to the page's progress bar."""

    def __init__(self):
        self.calls = []

    def __call__(self, value, desc=None, unit=None):
        self.calls.append((value, desc, unit))


def digits(pictures) -> torch.Tensor:
    """Enlarged grayscale pictures (PIL or uint8 arrays) as (N, 1, H, W) in [-1, 1]; the
    classifier averages them back to 8x8, the exact inverse of nearest-neighbour enlarging."""
    arrays = [np.asarray(p.convert("L") if isinstance(p, Image.Image) else p, dtype=np.float32) for p in pictures]
    return torch.from_numpy(np.stack(arrays))[:, None] / 127.5 - 1


def clip_scores(mp4: Path | bytes, label: int) -> dict:
    frames = read_video(mp4)[..., 0].float()[:, None]  # (T, 1, 256, 256)
    clip = F.avg_pool2d(frames, frames.shape[-1] // 16) / 127.5 - 1  # the model's 16x16 frames
    return video_scores(clip[None], torch.tensor([label]), box=8) | {"shape": tuple(frames.shape)}


# ------------------------------------------------------------------------------ in-process

def test_image_handler_gives_enlarged_digits_and_feeds_the_progress_bar(tmp_path):
    progress = Progress()
    images = Handlers(tmp_path).image("", "float32", "3, 7 1", "dpmpp_2m", 10, 2.0, 0, None, 0.6, None,
                                      progress=progress)
    assert [im.size for im in images] == [(256, 256)] * 3
    assert classify(digits(images)).tolist() == [3, 7, 1]
    assert progress.calls == [((i, 10), "sampling", "steps") for i in range(1, 11)]  # one call per step


def test_img2img_and_inpainting_read_the_gallerys_pictures_back_exactly(tmp_path):
    handlers = Handlers(tmp_path)
    three = handlers.image(*IMAGE, progress=Progress())[0]  # 256x256, as the gallery shows it
    black, white = Image.new("L", three.size, 0), Image.new("L", three.size, 255)
    edit = ("", "float32", "8", "dpmpp_2m", 10, 2.0, 1)
    kept = handlers.image(*edit, three, 0.6, black, progress=Progress())[0]
    assert np.array_equal(np.asarray(kept), np.asarray(three))  # a black mask keeps every pixel
    redrawn = handlers.image(*edit, three, 0.6, white, progress=Progress())[0]
    sdedit = handlers.image(*edit, three, 0.9, None, progress=Progress())[0]
    assert classify(digits([redrawn, sdedit])).tolist() == [8, 8]


def test_video_and_text_handlers(tmp_path):
    handlers = Handlers(tmp_path)
    path = handlers.video("", "float32", "5", 16, "euler_ancestral", 12, 4.0, 0, None, progress=Progress())
    scores = clip_scores(Path(path), 5)
    assert Path(path).parent == tmp_path and scores["shape"] == (16, 1, 256, 256) and scores["accuracy"] >= 0.9
    first = Image.fromarray(read_video(path)[0].numpy())  # image-to-video from its first frame, class read off it
    again = handlers.video("", "float32", "", 16, "euler_ancestral", 12, 4.0, 1, first, progress=Progress())
    assert clip_scores(Path(again), 5)["accuracy"] >= 0.9
    text = handlers.text("", "float32", "The function returns", 12, 1.0, "dpmpp_2m_sde", 16, 0, progress=Progress())
    assert text.startswith("The function returns") and len(text.split()) >= 5
    own = handlers.text("", "float32", " ", 12, 1.0, "dpmpp_2m_sde", 16, 0, progress=Progress())
    assert len(own.split()) >= 5  # a blank prompt: a sample of the model's own


@pytest.mark.parametrize("call, message", [
    (lambda h: h.image("", "float32", "12", *IMAGE[3:]), r"class label out of range: got \[12\]"),
    (lambda h: h.image("", "float32", " ", *IMAGE[3:]), "type one class label or more"),
    (lambda h: h.image("", "float32", "1 2 3 4 5", *IMAGE[3:]), "5 samples asked, this server makes at most 4"),
    (lambda h: h.image("", "float32", "3", "dpmpp_2m", 0, *IMAGE[5:]), "steps must be between 1 and 500"),
    (lambda h: h.image("/no/such/model", *IMAGE[1:]), "/no/such/model is not a folder"),
    (lambda h: h.image("", "int8", *IMAGE[2:]), "unknown dtype 'int8'"),
    (lambda h: h.video("", "float32", "3", 40, "euler", 5, 1.0, 0, None), "num_frames must be between 1 and 16"),
    (lambda h: h.text("", "float32", "x", 0, 1.0, "euler", 5, 0), "new tokens must be between 1 and 512"),
    (lambda h: h.text("", "float32", "x", 8, -1.0, "euler", 5, 0), "temperature must be a finite number >= 0, got -1.0"),
])
def test_bad_input_is_a_message_in_the_page(tmp_path, call, message):
    with pytest.raises(gr.Error, match=message):
        call(Handlers(tmp_path, max_batch=4))


def test_pipelines_load_once_per_task_model_and_dtype():
    assert load_pipeline("image") is load_pipeline("image", " ", "float32")  # blank: the shipped model
    half = load_pipeline("image", dtype="bfloat16")
    assert half is not load_pipeline("image") and half.dtype == torch.bfloat16
    assert half is load_pipeline("image", dtype="bfloat16")


# ------------------------------------------------------------------------------ servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(log: Path, *flags):
    """``mmdiff serve`` in a subprocess; yields (url, pid) once it answers, stops it afterwards."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mmdiff.cli", "serve", "--port", str(port), *flags],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_S
        while not _answers(url):
            assert proc.poll() is None, f"mmdiff serve exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"mmdiff serve did not answer in {START_S} s:\n{log.read_text()}"
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and at its peak so far (VmHWM), MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def say(config, line: str) -> None:
    """A line on the terminal even under ``pytest -q`` (print is captured)."""
    with config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        config.pluginmanager.get_plugin("terminalreporter").write_line(line)


@pytest.fixture(scope="module")
def artifacts(pytestconfig):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    say(pytestconfig, f"\nweb page test artefacts (screenshots, load numbers): {ARTIFACTS}")
    return ARTIFACTS


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory):
    """A server that holds 2 waiting requests: the browser's come one at a time; a burst overflows."""
    with serving(tmp_path_factory.mktemp("serve") / "serve.log", "--max_queue", "2") as server:
        yield server


# ------------------------------------------------------------------------------ the browser

@contextmanager
def browser_page():
    """A chromium page that may reach this machine only: every other request is refused and kept."""
    assert Path(CHROMIUM).is_file(), (f"{CHROMIUM} is missing: `make test` installs Debian's chromium "
                                      "(apt-get install -y chromium), or set CHROMIUM=/path/to/chromium")
    outside = []

    def route(request_route):
        url = request_route.request.url
        if url.startswith(("data:", "blob:")) or urlparse(url).hostname in ("127.0.0.1", "localhost"):
            request_route.continue_()
        else:
            outside.append(url)
            request_route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", route)
            yield page, outside
        finally:
            browser.close()


def set_value(page, selector: str, value) -> None:
    page.fill(selector, str(value))
    page.press(selector, "Tab")  # gradio takes a typed number on change


def settled(page, output: str) -> None:
    """Wait for the output's status overlay (shown while a request runs) to go, for a clean screenshot."""
    page.wait_for_selector(f"{output} > [data-testid=status-tracker].hide", state="attached", timeout=30_000)


PNG_OF = """imgs => imgs.map(img => {  // what the browser decoded, as a lossless PNG
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    canvas.getContext('2d').drawImage(img, 0, 0);
    return canvas.toDataURL('image/png');
})"""


def displayed_pictures(page, selector: str) -> list[Image.Image]:
    urls = page.eval_on_selector_all(selector, PNG_OF)
    return [Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) for url in urls]


@pytest.mark.slow
def test_the_page_in_a_browser(small_queue, artifacts):
    url, _ = small_queue
    with browser_page() as (page, outside):
        page.goto(url)
        page.wait_for_selector("#image-generate", timeout=60_000)

        page.fill("#image-labels textarea", "3 7 1")
        set_value(page, "#image-steps input[type=number]", 10)
        set_value(page, "#image-guidance input[type=number]", 2)
        page.click("#image-generate")
        page.wait_for_function("document.querySelectorAll('#image-out .thumbnail-item img').length == 3 && "
                               "[...document.querySelectorAll('#image-out .thumbnail-item img')].every(i => i.complete)",
                               timeout=60_000)
        shown = displayed_pictures(page, "#image-out .thumbnail-item img")
        assert [im.size for im in shown] == [(256, 256)] * 3  # 8x8 digits, enlarged 32x
        assert classify(digits(shown)).tolist() == [3, 7, 1]
        settled(page, "#image-out")
        page.screenshot(path=artifacts / "ui-image.png")

        page.get_by_role("tab", name="Video").click()
        page.fill("#video-labels textarea", "6")
        set_value(page, "#video-steps input[type=number]", 12)
        page.click("#video-generate")
        page.wait_for_function("(() => { const v = document.querySelector('#video-out video');"
                               " return v && v.readyState >= 2; })()", timeout=60_000)
        video = page.locator("#video-out video")
        video.evaluate("v => { v.muted = true; return v.play(); }")
        start = video.evaluate("v => v.currentTime")
        page.wait_for_timeout(1000)
        playing = video.evaluate("v => [v.currentTime, v.paused, v.videoWidth, v.videoHeight, v.duration]")
        assert playing[0] > start and not playing[1] and playing[2:4] == [256, 256]
        assert playing[4] == pytest.approx(2.0, abs=0.2)  # 16 frames at 8 fps
        served = urllib.request.urlopen(video.evaluate("v => v.currentSrc"), timeout=10).read()
        scores = clip_scores(served, 6)
        assert scores["shape"] == (16, 1, 256, 256) and scores["accuracy"] >= 0.9
        settled(page, "#video-out")
        page.screenshot(path=artifacts / "ui-video.png")

        page.get_by_role("tab", name="Text").click()
        page.fill("#text-prompt textarea", "Return the")
        set_value(page, "#text-new input[type=number]", 16)
        set_value(page, "#text-steps input[type=number]", 16)
        page.click("#text-generate")
        page.wait_for_function("(() => { const t = document.querySelector('#text-out textarea');"
                               " return t && t.value.length > 'Return the'.length + 5; })()", timeout=60_000)
        text = page.input_value("#text-out textarea")
        assert text.startswith("Return the") and len(text.split()) >= 5
        settled(page, "#text-out")
        page.screenshot(path=artifacts / "ui-text.png")

        page.get_by_role("tab", name="Image").click()
        page.fill("#image-labels textarea", "3 12")  # bad input: a message in the page, not a trace
        page.click("#image-generate")
        page.wait_for_selector(".toast-body.error:has-text('class label out of range: got [3, 12]')", timeout=30_000)
        page.screenshot(path=artifacts / "ui-error.png")
    assert outside == []  # the page asked nothing of any other machine


@pytest.mark.slow
def test_a_full_queue_says_busy_and_loses_nothing(small_queue):
    url, _ = small_queue
    client = Client(url, verbose=False)
    watched = client.submit("", "float32", "2", 16, "euler", 150, 4.0, 0, None, api_name="/video")
    steps = []
    while not watched.done():  # the sampler's callback reaches a client as progress updates
        steps += [(p.index, p.length, p.desc) for p in watched.status().progress_data or []]
        time.sleep(0.05)
    assert steps and all(length == 150 and desc == "sampling" for _, length, desc in steps)
    indices = [index for index, _, _ in steps]  # polled every 50 ms of a ~3 s solve
    assert indices == sorted(indices) and len(set(indices)) >= 3 and indices[-1] >= 100
    burst = [client.submit("", "float32", "2", 16, "euler", 150, 4.0, i, None, api_name="/video") for i in range(6)]
    answers, busy = [], 0
    for job in burst:
        try:
            answers.append(job.result(timeout=120))
        except Exception as e:  # gradio_client's QueueError
            assert "Queue is full" in str(e), e
            busy += 1
    assert busy >= 1 and len(answers) >= 2 and len(answers) + busy == 6  # 1 sampled + 2 waiting, the rest told
    assert all(clip_scores(Path(a), 2)["accuracy"] >= 0.9 for a in answers)
    assert client.predict(*IMAGE, api_name="/image")  # still serving


@pytest.mark.slow
def test_sixteen_users_at_once(tmp_path, artifacts, pytestconfig):
    """16 concurrent image requests: every answer arrives, is the asked digit, and memory stays bounded."""
    with serving(tmp_path / "serve.log") as (url, pid):
        client = Client(url, verbose=False)
        client.predict(*IMAGE, api_name="/image")  # warm: the first request pays for imports
        before = memory_mib(pid)

        users = [Client(url, verbose=False) for _ in range(16)]

        def ask(i):
            start = time.perf_counter()
            gallery = users[i].predict("", "float32", str(i % 10), *IMAGE[3:6], i, None, 0.6, None, api_name="/image")
            return time.perf_counter() - start, gallery

        rounds = []
        for _ in range(2):  # a second round: memory does not grow with the number of requests
            with ThreadPoolExecutor(16) as pool:
                started = time.perf_counter()
                results = list(pool.map(ask, range(16)))
                rounds.append((time.perf_counter() - started, results, memory_mib(pid)))
    for wall, results, _ in rounds:
        shown = [Image.open(gallery[0]["image"]) for _, gallery in results]
        assert all(len(gallery) == 1 for _, gallery in results) and len(shown) == 16
        assert classify(digits(shown)).tolist() == [i % 10 for i in range(16)]
    latencies = sorted(t for _, results, _ in rounds for t, _ in results)
    numbers = {"requests": 32, "concurrent": 16, "rss_before_mib": round(before["VmRSS"]),
               "rss_after_round_mib": [round(m["VmRSS"]) for *_, m in rounds],
               "peak_rss_mib": round(rounds[-1][2]["VmHWM"]), "round_wall_s": [round(w, 2) for w, *_ in rounds],
               "latency_s": {"median": round(latencies[16], 2), "max": round(latencies[-1], 2)}}
    (artifacts / "load.json").write_text(json.dumps(numbers, indent=2))
    say(pytestconfig, f"16 users at once: {numbers}")
    assert rounds[-1][2]["VmHWM"] - before["VmRSS"] < 100  # MiB (measured: +15): one request sampled at a time
    assert rounds[1][2]["VmRSS"] - rounds[0][2]["VmRSS"] < 25  # MiB (measured: +4): no growth per request
