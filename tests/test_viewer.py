"""The viewer in a real browser: headless Chromium (Debian's chromium and chromium-driver) over selenium.

One ``mushu up`` and one viewer serve every test of this module, as a lab runs them: pages open, reload
and vanish while the services and the viewer go on. Screenshots go to ``test-artifacts/`` (or
``$MUSHU_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from support import free_port, mushu, mushu_up

from mushu_core.control import ControlClient
from mushu_core.recordings import load
from mushu_viewer.core import Access, Decimator, channel_quality, decode_frame, encode_frame, envelope

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("MUSHU_TEST_ARTIFACTS", ROOT / "test-artifacts"))
FS, CHANNELS, LINE_HZ = 1000, 8, 50


# -- the core, without sockets ----------------------------------------------------------------------

def test_quality_names_a_flat_a_railing_and_a_line_noise_channel():
    t = np.arange(FS) / FS
    rng = np.random.default_rng(1)
    eeg = rng.normal(0, 10, FS)
    window = np.column_stack([eeg, np.full(FS, 3.0), np.clip(eeg * 20, -100, 100),
                              eeg * 0.1 + 20 * np.sin(2 * np.pi * LINE_HZ * t), 20 * np.sin(2 * np.pi * 60 * t)])
    assert channel_quality(window, FS) == ["ok", "flat", "railing", "line noise", "line noise"]


def test_frames_round_trip_and_envelopes_keep_every_spike():
    data = np.arange(24, dtype=np.float32).reshape(8, 3)
    header, back = decode_frame(encode_frame(5, FS, 1.5, data))
    assert (header["first_sample"], header["n"], header["channels"], header["envelope"]) == (5, 8, 3, False)
    np.testing.assert_array_equal(back, data)
    spiky = np.zeros((100, 2), dtype=np.float32)
    spiky[37, 1] = 1e3
    spiky[81, 0] = -5
    env = envelope(spiky, 10)
    assert env.shape == (20, 2) and env[:, 1].max() == 1e3 and env[:, 0].min() == -5
    d = Decimator(20_000.0, 2)  # above the page's rate: min/max pairs, runs held across calls
    assert d.factor == 8 and d.fs == 5000.0
    first, rows = d.feed(0, spiky[:20])
    assert (first, len(rows)) == (0, 4)  # two runs of 8; 4 samples held
    first, rows = d.feed(20, spiky[20:44])
    assert (first, len(rows)) == (4, 6)  # the held 4 and 20 more: three runs, from run 2
    assert rows[:, 1].max() == 1e3


def test_tokens_give_roles_and_loopback_alone_looks_without_one():
    access = Access({"viewer": "v" * 20, "controller": "c" * 20})
    assert access.role("v" * 20, False) == "viewer" and access.role("c" * 20, False) == "controller"
    assert access.role("x" * 20, True) is None and access.role(None, True) == "viewer"
    assert access.role(None, False) is None
    assert Access.may("controller", "record") and not Access.may("viewer", "record")
    assert not Access.may("viewer", "marker") and Access.may("viewer", "look") and not Access.may(None, "look")
    with pytest.raises(ValueError, match="unknown viewer role"):
        Access({"admin": "a" * 20})


# -- real services, a real viewer, a real browser -------------------------------------------------------

def _viewer(env, *args):
    """A viewer process on a free port; its (process, {role: URL})."""
    proc = subprocess.Popen([sys.executable, "-m", "mushu_viewer", "--port", "0", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [proc.stdout.readline(), proc.stdout.readline()]
    found = [re.search(r"(http://\S+)", line) for line in lines]
    assert all(found), "".join(lines) + proc.stdout.read() if proc.poll() is not None else "".join(lines)
    return proc, {"viewer": found[0].group(1), "controller": found[1].group(1)}


def _stop(proc):
    proc.terminate()
    try:
        out = proc.communicate(timeout=10)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
    return out


def viewer_service(env) -> dict:
    """What ``mushu status`` says of the viewer it supervises."""
    return json.loads(mushu("status", "--json", env=env, check=False).stdout)["services"]["viewer"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``mushu up`` with the viewer, and an amp acquiring a 50 Hz sinus (1 kHz x 8), for the whole module."""
    root = tmp_path_factory.mktemp("viewer")
    with mushu_up(root, f"[viewer]\nup = 1\nport = {free_port()}\n") as (env, up):
        found = re.search(r"the viewer: look at (http://\S+), control at (http://\S+)", up)
        assert found, up
        urls = {"viewer": found.group(1), "controller": found.group(2)}
        tokens = json.loads((root / "run" / "viewer-tokens.json").read_text())  # kept for a restarted viewer
        assert urls["controller"].endswith("token=" + tokens["controller"])
        import mushu_client
        amp = mushu_client.get_amp("sinusamp")
        amp.configure(f=LINE_HZ, fs=FS, channels=CHANNELS)
        amp.start()
        viewer = viewer_service(env)
        assert viewer["state"] == "RUNNING" and "page at http://127.0.0.1:" in mushu("status", env=env).stdout
        try:
            yield {"env": env, "urls": urls, "amp": amp, "root": root}
        finally:
            amp.stop()
            amp.close()
        after = viewer_service(env)
    log = (root / "run" / "viewer.log").read_text()
    # one viewer served every page of the module: never restarted, nothing it could not handle
    assert (after["pid"], after["restarts"]) == (viewer["pid"], 0), after
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, ("the browser tests need Debian's chromium and chromium-driver "
                                      "(apt install chromium chromium-driver; .ci/run installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what, check, timeout=10.0, every=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(every)


def js(driver, expression):
    return driver.execute_script(f"return {expression};")


def canvas_digest(driver) -> tuple[str, int]:
    """The trace canvas's pixels: a digest, and how many are not background."""
    raw = driver.execute_script("""
        const c = document.getElementById('traces'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let ink = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 200) ink++;
        return [c.toDataURL('image/png'), ink];""")
    return hashlib.sha256(raw[0].encode()).hexdigest(), raw[1]


def open_page(driver, url):
    driver.get(url)
    wait_for("the page draws the stream", lambda: js(driver, "window.mushuViewer && window.mushuViewer.stats.frames > 5"))


def test_traces_render_and_move_and_the_status_says_what_runs(lab, browser):
    open_page(browser, lab["urls"]["viewer"])
    first, ink = canvas_digest(browser)
    assert ink > 5000, "the traces are drawn"
    wait_for("the canvas changes as data flows", lambda: canvas_digest(browser)[0] != first, timeout=2.0)
    assert js(browser, "window.mushuViewer.nch") == CHANNELS
    # 1100 pixel columns for 5 s: a column is 4.5454... rows, where (c + 1) * rows rounds above the row
    # that completes it for about one column in fifty; each must still be drawn once that row is in
    width = js(browser, "document.getElementById('traces').width")
    browser.set_window_size(1400 + 1100 - width, 900)
    wait_for("the canvas resized", lambda: js(browser, "document.getElementById('traces').width") == 1100)
    browser.execute_script("const t = document.getElementById('timebase'); t.value = '5'; t.onchange();")
    drawn = js(browser, "window.mushuViewer.drawnCol")
    wait_for("600 columns drawn", lambda: js(browser, "window.mushuViewer.drawnCol") > drawn + 600, timeout=8.0)
    assert js(browser, "window.mushuViewer.blankColumns()") == [], "every pixel column of the traces is drawn"
    browser.execute_script("const t = document.getElementById('timebase'); t.value = '10'; t.onchange();")
    browser.set_window_size(1400, 900)
    labels = wait_for("status", lambda: browser.find_element("id", "status").text)
    assert "sinusamp" in labels and "1000 Hz nominal" in labels
    wait_for("the measured rate", lambda: re.search(r"(\d+\.\d) Hz measured", browser.find_element("id", "status").text))
    measured = float(re.search(r"(\d+\.\d) Hz measured", browser.find_element("id", "status").text).group(1))
    assert abs(measured - FS) < 5
    quality = wait_for("quality", lambda: [q for q in js(browser, "[...document.querySelectorAll('#channels td:nth-child(2)')]"
                                                             ".map((td) => td.textContent)") if q != "…"])
    assert quality == ["line noise"] * CHANNELS  # a 50 Hz sinus is nothing but line noise
    browser.save_screenshot(str(ARTIFACTS / "viewer-live.png"))
    # the display's 50 Hz notch takes the sinus out of the traces (only on the page: the stream is as it was)
    _, before = canvas_digest(browser)
    browser.execute_script("const n = document.getElementById('notch'); n.value = '50'; n.onchange();")
    _, after = canvas_digest(browser)
    assert after < before / 3, (before, after)
    browser.execute_script("const n = document.getElementById('notch'); n.value = '0'; n.onchange();")
    assert canvas_digest(browser)[1] > before / 2


def test_a_marker_sent_over_udp_is_a_labelled_line_within_a_second(lab, browser):
    from mushu_client.sender import MarkerSender
    open_page(browser, lab["urls"]["viewer"])
    with MarkerSender("127.0.0.1", int(lab["env"]["MUSHU_MARKERS_PORT"]), protocol="udp") as sender:
        for i in range(3):
            label = f"udp-{i}-{time.monotonic_ns()}"
            t0 = time.monotonic()
            sender.send(label)
            wait_for(f"marker {label} listed and drawn", lambda label=label: label in browser.find_element(
                "id", "markers").text and js(browser, f"window.mushuViewer.stats.markersDrawn.includes({json.dumps(label)})"),
                     timeout=1.0, every=0.01)
            assert time.monotonic() - t0 < 1.0
            item = browser.find_element("css selector", f"#markers li[data-label={json.dumps(label)}]").text
            assert re.fullmatch(re.escape(label) + r" \(sample \d+\)", item), item
    browser.save_screenshot(str(ARTIFACTS / "viewer-marker.png"))


def _recorder(env):
    return ControlClient(env["MUSHU_RECORDER_CONTROL"], 5.0, "recorder")


def test_a_viewer_may_not_record_or_mark_and_a_controller_may(lab, browser):
    env = lab["env"]
    open_page(browser, lab["urls"]["viewer"])
    assert browser.find_element("id", "record-start").get_attribute("disabled") is not None
    refused = browser.execute_async_script(
        "const done = arguments[0]; window.mushuViewer.send({type: 'record', name: 'not-mine'}).then(done);")
    assert refused["ok"] is False and "a viewer may not record" in refused["error"], refused
    refused = browser.execute_async_script(
        "const done = arguments[0]; window.mushuViewer.send({type: 'marker', label: 'no'}).then(done);")
    assert refused["ok"] is False and "may not marker" in refused["error"], refused
    rec = _recorder(env)
    assert rec.call("status")["state"] == "idle"

    open_page(browser, lab["urls"]["controller"])
    assert js(browser, "window.mushuViewer.role") == "controller"
    name = browser.find_element("id", "record-name")
    name.clear()
    name.send_keys("from-the-page")
    browser.find_element("id", "record-start").click()
    status = wait_for("the recorder records", lambda: (s := rec.call("status"))["state"] == "recording" and s)
    assert status["recording"]["name"] == "from-the-page"
    wait_for("the page shows the recording", lambda: "from-the-page" in browser.find_element("id", "status").text)
    label = browser.find_element("id", "marker-label")
    label.clear()
    label.send_keys("from the page")
    browser.find_element("id", "marker-send").click()
    wait_for("the page's marker comes back over the bus",
             lambda: "from the page" in browser.find_element("id", "markers").text)
    wait_for("a second recorded", lambda: rec.call("status")["recording"]["n_samples"] >= FS)
    wait_for("stop is offered", lambda: browser.find_element("id", "record-stop").is_enabled())
    browser.find_element("id", "record-stop").click()
    wait_for("the recording ends", lambda: rec.call("status")["state"] == "idle")
    wait_for("the page says so", lambda: "stop recording: done" in browser.find_element("id", "messages").text)
    rec.close()
    recording = load(os.path.join(env["MUSHU_DATA_DIR"], "from-the-page"))
    assert len(recording.data) >= FS and recording.data.shape[1] == CHANNELS and not recording.gaps
    assert [label for _ms, label in recording.markers] == ["from the page"]
    browser.save_screenshot(str(ARTIFACTS / "viewer-controller.png"))


def test_pages_that_vanish_leave_the_viewer_serving(lab, browser):
    for _ in range(8):  # reloads: each page's socket goes without a goodbye
        browser.get(lab["urls"]["viewer"])
        wait_for("the page draws", lambda: js(browser, "window.mushuViewer && window.mushuViewer.stats.frames > 0"))
    open_page(browser, lab["urls"]["viewer"])
    assert viewer_service(lab["env"])["state"] == "RUNNING"
    first, _ = canvas_digest(browser)
    wait_for("still moving", lambda: canvas_digest(browser)[0] != first, timeout=2.0)


def test_a_recording_opens_in_the_same_page_with_a_scrollbar(lab, browser):
    proc, urls = _viewer({**lab["env"], "MUSHU_VIEWER_TOKENS": ""}, "from-the-page")
    try:
        browser.get(urls["viewer"])
        wait_for("the recording drawn", lambda: js(browser, "window.mushuViewer && window.mushuViewer.mode") ==
                 "recording" and canvas_digest(browser)[1] > 2000)
        assert browser.find_element("id", "offline").is_displayed()
        assert "from the page" in browser.find_element("id", "markers").text
        assert "from-the-page" in browser.find_element("id", "stream-name").text
        assert browser.find_element("id", "record-start").get_attribute("disabled") is not None
        browser.save_screenshot(str(ARTIFACTS / "viewer-recording.png"))
    finally:
        out = _stop(proc)
    assert "Traceback" not in out, out


def test_beyond_loopback_every_request_needs_a_token(lab):
    proc, urls = _viewer({**lab["env"], "MUSHU_VIEWER_TOKENS": ""}, "--host", "0.0.0.0")  # all interfaces; this test talks to it on loopback only
    try:
        port = urls["viewer"].split(":")[2].split("/")[0]
        base = f"http://127.0.0.1:{port}"
        token = urls["viewer"].split("token=")[1]

        def status(path, headers=None):
            try:
                with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers or {}), timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as exc:
                return exc.code
        assert status("/") == 401
        assert status("/?token=" + "x" * 24) == 401
        assert status("/?token=" + token) == 200
        ws = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        assert status("/ws") == 401
        assert status(f"/ws?token={token}", {**ws, "Origin": "http://evil.example"}) == 403
    finally:
        _stop(proc)


def test_an_amplifier_in_impedance_mode_shows_a_bar_per_channel(lab, browser, spawn_amp):
    """The emulated g.USBamp (at the pyusb backend) in impedance mode: each bar the median of its channel."""
    from hardware_checks import spawn_with
    from usb_fakes import gusbamp_values

    import mushu_client
    svc = spawn_with(spawn_amp, "gusbamp_backend")
    amp = mushu_client.get_amp("gusbamp", data=svc.data, control=svc.control)
    amp.configure(fs=256, mode="impedance")
    amp.start()
    proc, urls = _viewer({**lab["env"], "MUSHU_VIEWER_TOKENS": ""}, "--amp-data", svc.data, "--amp-control", svc.control)
    try:
        browser.get(urls["viewer"])
        bars = wait_for("impedance bars", lambda: browser.execute_script("""
            const bars = [...document.querySelectorAll('#impedance-bars li')];
            return bars.length && bars.every((li) => li.dataset.rows) &&
                bars.map((li) => [li.children[0].textContent, li.dataset.kohm, li.dataset.rows, li.children[2].textContent]);"""))
        assert browser.find_element("id", "impedance").is_displayed()
        assert [name for name, *_ in bars] == amp.get_channels()
        for c, (_name, kohm, rows, text) in enumerate(bars):
            first, last = map(int, rows.split(":"))
            eeg = gusbamp_values(first, last - first)[:, c].copy()  # float32, as the driver computes
            ohm = eeg * 1e6 / (1e4 - eeg) - 1e4 if c < 16 else eeg  # the trigger channel is as it comes
            median = float(np.sort(ohm)[len(ohm) // 2]) / 1000  # the page's: the upper of two middles
            assert abs(float(kohm) - median) <= 1e-3 + 1e-6 * abs(median), (c, kohm, median)
            assert text.endswith(" kΩ")
        browser.save_screenshot(str(ARTIFACTS / "viewer-impedance.png"))
    finally:
        out = _stop(proc)
        amp.stop()
        amp.close()
    assert "Traceback" not in out, out
