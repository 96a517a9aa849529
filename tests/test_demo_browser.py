"""`maestro-xl demo` in a real browser: Debian's Chromium, driven by Playwright, against the app started on a free
localhost port with a tiny model folder made here. Upload a primer, pick a composer, generate, listen, download the
MIDI and read it back with mido; then a corrupt and an oversized upload, each a message, and the page still works."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, note, write_midi
from test_generate import PRIMER_NOTES, notes_by_mido
from test_package import LABELS, tiny_labelled_model

from pipeline.model_folder import export_model
from pipeline.music.performance_encoding import VOCAB_SIZE

CHROMIUM = Path("/usr/bin/chromium")
# Chromium's own connections (updates, sync) fail on a closed network, and as root it needs --no-sandbox.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
SECONDS = 4.0  # of new music per take
LIMIT_MB = 0.05  # demo.max_upload_mb here

pytest.importorskip("gradio", reason="the demo extra (pip install -e '.[demo]') is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found: apt-get install chromium (.ci/run does)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The demo serving a tiny labelled model, on a free port; its URL."""
    folder = tmp_path_factory.mktemp("demo")
    export_model(tiny_labelled_model(), folder / "model", {"vocab_size": VOCAB_SIZE, "labels": LABELS})
    settings = {"generate": {"device": "cpu", "precision": "float32", "primer_seconds": 10.0},
                "demo": {"seconds": SECONDS, "max_upload_mb": LIMIT_MB}}  # fmt: skip
    (folder / "params.yaml").write_text(yaml.safe_dump(settings))
    port = free_port()
    command = [sys.executable, "-m", "pipeline", "demo", "--model", str(folder / "model"), "--port", str(port),
               "--params", str(folder / "params.yaml"), "--tokens", str(folder / "no-tokens")]  # fmt: skip
    env = {**os.environ, "GRADIO_TEMP_DIR": str(folder / "gradio")}
    log = (folder / "demo.log").open("w")
    server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while f"demo: serving {url}" not in (folder / "demo.log").read_text():
        assert server.poll() is None and time.monotonic() < deadline, (folder / "demo.log").read_text()
        time.sleep(0.2)
    yield url, folder
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def page(app):  # noqa: ANN001, ANN201
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 1100}, accept_downloads=True)
        tab.goto(app[0])
        tab.wait_for_selector("#generate")
        yield tab
        browser.close()


def upload(page, path: Path, accepted: bool = True) -> None:  # noqa: ANN001
    """Replace the page's primer upload with `path`, waiting until it is there when the server `accepted` it."""
    clear = page.locator("#upload button[aria-label=Clear]")
    if clear.count():
        clear.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))
    if accepted:
        page.locator(f"#upload [aria-label='{path.name}']").wait_for()  # uploaded, and chosen as the start
        page.wait_for_function("() => document.querySelector('#source input')?.value === 'the uploaded file'")


def generate_and_wait(page) -> str:  # noqa: ANN001
    """Press Generate and wait for what it ends with, a take or a message (a status other than the one before that
    starts with 'Take' or '⚠'); the status text."""
    before = page.locator("#status").inner_text()
    page.click("#generate")
    page.wait_for_function(
        """before => {
            const now = document.querySelector('#status')?.innerText || '';
            return now !== before && (now.startsWith('Take') || now.startsWith('⚠'));
        }""",
        arg=before,
        timeout=120_000,
    )
    return page.locator("#status").inner_text()


def take_number(status: str) -> int:
    """N of a status 'Take N: ...'."""
    assert status.startswith("Take "), status
    return int(status.split(":")[0].split()[1])


def test_a_primer_and_a_composer_give_a_take_to_hear_and_download(page, tmp_path):
    events = [e for on, off, p, v in PRIMER_NOTES for e in note(round(on * 960), round(off * 960), p, v)]
    primer = write_midi(tmp_path / "my-primer.mid", [events])
    upload(page, primer)
    page.click("#composer input")
    page.click("[role=option]:has-text('Bach')")
    assert page.locator("#composer input").input_value() == "Bach"
    status = generate_and_wait(page)
    assert f"{SECONDS:.1f} s as Bach" in status and "Flags:" in status
    page.wait_for_selector("#audio audio[src]", state="attached")  # the WAV, in the player
    assert page.locator("#roll img").count() == 1  # the finished piano roll
    assert page.locator("#midi a[download]").get_attribute("download") == f"maestro-xl-take-{take_number(status)}.mid"
    with page.expect_download() as caught:
        page.click("#midi a[download]")
    midi = tmp_path / "take.mid"
    caught.value.save_as(midi)
    primer_notes = notes_by_mido(primer)
    played = notes_by_mido(midi)
    assert len(played) >= len(primer_notes) == len(PRIMER_NOTES)
    for (on, off, pitch, velocity), got in zip(primer_notes, played, strict=False):  # it begins with the primer
        assert got[2] == pitch and abs(got[0] - on) <= 0.011 and abs(got[1] - off) <= 0.011
        assert abs(got[3] - velocity) < 4  # in its velocity bin
    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    assert (tmp_path / "demo.png").stat().st_size > 20_000


def test_a_corrupt_upload_is_a_message_and_the_next_request_still_works(page, tmp_path):
    corrupt = tmp_path / "broken.mid"
    corrupt.write_bytes(b"MThd\0\0\0\6not a midi file at all")
    upload(page, corrupt)
    status = generate_and_wait(page)
    assert page.locator("#midi a[download]").count() == 0  # the last take's files are gone with its status
    assert status.startswith("⚠ broken.mid: not a readable MIDI primer")
    assert str(tmp_path) not in status
    events = [e for on, off, p, v in PRIMER_NOTES for e in note(round(on * 960), round(off * 960), p, v)]
    upload(page, write_midi(tmp_path / "good.mid", [events]))
    status = generate_and_wait(page)
    assert page.locator("#midi a[download]").get_attribute("download") == f"maestro-xl-take-{take_number(status)}.mid"


def test_an_oversized_upload_is_refused_with_a_message(page, tmp_path):
    big = tmp_path / "huge.mid"
    big.write_bytes(b"MThd" + bytes(int(LIMIT_MB * 2**20) + 1000))
    upload(page, big, accepted=False)
    toast = page.locator("[data-testid=toast-body]").filter(has_text="huge.mid")
    toast.wait_for(timeout=30_000)
    assert "maximum allowed size" in toast.inner_text()
    page.screenshot(path=str(tmp_path / "refused.png"))
    page.click("#source input")  # and the page goes on: a take from nothing
    page.click("[role=option]:has-text('no primer')")
    assert take_number(generate_and_wait(page)) >= 1


def test_a_port_in_use_is_a_one_line_error(app):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "pipeline", "demo", "--model", str(app[1] / "model"), "--port",
                                 str(port), "--params", str(app[1] / "params.yaml")], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.startswith(f"error: demo: cannot listen on 127.0.0.1:{port} (") and result.stderr.count("\n") == 1
    )


def listening_addresses(port: int) -> set[str]:
    """The IPv4 and IPv6 addresses a socket listens on at `port`, read from /proc/net/tcp{,6}."""
    found = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:] if table.is_file() else []:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]  # each 32-bit word little-endian
                found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, b"".join(words)))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="no /proc/net/tcp to read listening sockets from")
def test_the_page_listens_on_loopback_only_and_makes_no_share_link(app):
    url, folder = app
    assert listening_addresses(int(url.rsplit(":", 1)[1].strip("/"))) == {"127.0.0.1"}
    log = (folder / "demo.log").read_text()
    assert "gradio.live" not in log and "share" not in log.lower()


def refusal(client, args: dict) -> str:  # noqa: ANN001
    """The message a request outside the page's limits gets through the API."""
    from gradio_client.exceptions import AppError

    try:
        status = client.predict(**args)[0]
    except AppError as exc:
        return str(exc)
    assert status.startswith("⚠ "), status
    return status


def test_two_requests_at_once_are_both_served_one_after_the_other(app):
    """The page in this process, its studio timing each take: both takes come, and they do not overlap."""
    from gradio_client import Client

    from pipeline.demo.page import build
    from pipeline.demo.studio import Studio
    from pipeline.params import DemoParams, GenerateParams

    limits = DemoParams(seconds=SECONDS, max_seconds=30, max_upload_mb=1)
    studio = Studio(app[1] / "model", app[1] / "no-tokens", GenerateParams(device="cpu"), limits)
    spans, compose = [], studio.compose

    def timed(request, on_progress=None):  # noqa: ANN001, ANN202
        started = time.monotonic()
        take = compose(request, on_progress)
        spans.append((started, time.monotonic()))
        return take

    studio.compose = timed
    page = build(studio)
    page.launch(server_name="127.0.0.1", server_port=free_port(), share=False, quiet=True, prevent_thread_lock=True)
    try:
        client = Client(page.local_url, verbose=False)
        args = dict(file=None, start="no primer: start from nothing", cut=10, who="any", scale=1.0, secs=SECONDS,
                    temp=1.0, nucleus=0.98, api_name="/generate")  # fmt: skip
        jobs = [client.submit(**args, seed_value=seed) for seed in (1, 2)]
        statuses = [job.result(timeout=120)[0] for job in jobs]
        # The API keeps the page's limits: an hour of music, or a temperature off the slider, is refused with a
        # message (Gradio's own check of the slider, or the studio's behind it), and no take is made.
        refused = [
            refusal(client, {**args, name: value, "seed_value": 3}) for name, value in (("secs", 3600.0), ("temp", 9.0))
        ]
    finally:
        page.close()
        studio.close()
    assert "seed 1," in statuses[0] and "seed 2," in statuses[1]
    (first_start, first_end), (second_start, second_end) = sorted(spans)
    assert len(spans) == 2 and first_end <= second_start  # queued, not run side by side
    assert "3600" in refused[0] and "30" in refused[0] and "9" in refused[1] and "1.5" in refused[1], refused
    assert len(spans) == 2
