r"""Recording files as mushu, wyrm and MNE-Python read them; conversion and plotting.

The amp, markers and recorder services run as real processes. What each
reader sees of a tricky label is spelled out in ``TRICKY``: mushu's
``load`` returns every label exactly; wyrm's ``load_mushu_data`` sees
``.marker``'s escapes for backslashes, control characters and whitespace
around a label; mne's BrainVision reader sees ``.vmrk``, where only commas
(``\1``) and control characters are encoded.
"""

import html
import json
import os
import re
import string
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_recorder_crash import FS, Collector  # get_data's samples and markers at absolute positions

import mushu_client
from mushu_cli import main as cli
from mushu_cli.bids import tsv_label
from mushu_client import MarkerSender, ServiceUnavailable
from mushu_core.recordings import escape_label, load, plain_label, unescape_label
from mushu_recorder.files import RecordingWriter

mne = pytest.importorskip("mne")

# (label sent, what wyrm's load_mushu_data returns, what mne's read_raw_brainvision returns)
TRICKY = [
    ("a,b", "a,b", "a,b"),
    ("back\\slash", "back\\\\slash", "back\\slash"),
    ("C:\\stim\\1", "C:\\\\stim\\\\1", "C:\\stim,"),  # BrainVision's \1 is a comma to mne
    ("\\n is text", "\\\\n is text", "\\n is text"),
    ("  padded  ", "\\x20 padded \\x20", "  padded  "),
    (" ", "\\x20", " "),
    ("\tlead", "\\x09lead", "\tlead"),
    ("tab\tinside", "tab\tinside", "tab\tinside"),
    ("trail\u3000", "trail\\u3000", "trail\u3000"),
    ("ünï ✓ 😀", "ünï ✓ 😀", "ünï ✓ 😀"),
    ("semi;colon=eq \"q\"", "semi;colon=eq \"q\"", "semi;colon=eq \"q\""),
]
# Through the writer only: MarkerSender refuses newlines, the markers service replaces control characters.
WRITER_ONLY = [
    ("two\nlines", "two\\nlines", "two\\nlines"),
    ("cr\r", "cr\\r", "cr\\r"),
    ("crlf\r\nend", "crlf\\r\\nend", "crlf\\r\\nend"),
    ("nul\x00esc\x1b", "nul\\x00esc\\x1b", "nul\\x00esc\\x1b"),
    ("nel\x85ls\u2028", "nel\x85ls\\u2028", "nel\x85ls\u2028"),
    ("\n", "\\n", "\\n"),
]


# -- readers written as wyrm and mne read ------------------------------------------------


def wyrm_load_mushu_data(meta):
    """What wyrm.io.load_mushu_data does: data, time axis (ms), [ms, label] markers."""
    datafile = meta[::-1].replace("atem.", "gee.", 1)[::-1]
    markerfile = meta[::-1].replace("atem.", "rekram.", 1)[::-1]
    with open(meta) as fh:
        metadata = json.load(fh)
    fs = metadata["Sampling Frequency"]
    channels = np.array(metadata["Channels"])
    data = np.fromfile(datafile, np.float32).reshape((-1, len(channels)))
    markers = []
    with open(markerfile) as fh:
        for line in fh:
            ts, m = line.split(" ", 1)
            markers.append([float(ts), str(m).strip()])
    duration = len(data) * 1000 / fs
    return data, np.linspace(0, duration, len(data), endpoint=False), markers


def mne_brainvision(base):
    raw = mne.io.read_raw_brainvision(base + ".vhdr", preload=True, verbose="error")
    samples = np.round(raw.annotations.onset * raw.info["sfreq"]).astype(int)
    return raw, list(zip(samples.tolist(), raw.annotations.description))


def bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


# -- recording live ------------------------------------------------------------------------


def record(amp, markers_port, name, labels, min_samples=300):
    """Record ``name`` while sending ``labels`` to the markers service; return the Collector."""
    sender = MarkerSender("127.0.0.1", markers_port)
    # A marker that reaches the client after its sample was returned ("late") comes with the next
    # call at a negative ms: on its true sample all the same, the one the recorder writes it on.
    sender.send("warm-up")  # stamped before start: in neither
    time.sleep(0.05)
    amp.start(name)
    c = Collector(amp)
    deadline = time.monotonic() + 20
    for label in labels:
        c.read()
        sender.send(label)
    while len(c.markers) < len(labels) or c.n < min_samples:
        assert time.monotonic() < deadline, c.markers
        c.read()
    amp.stop()
    c.drain()
    sender.close()
    assert amp.marker_counts["lost"] == 0
    return c


@pytest.fixture
def services(spawn_amp, spawn_markers, spawn_recorder):
    amp_svc, mk = spawn_amp(), spawn_markers()
    return amp_svc, mk, spawn_recorder(amp_svc, mk)


def open_amp(services, name="rampamp", recorder=None, **config):
    amp_svc, mk, rec = services
    amp = mushu_client.get_amp(name, data=amp_svc.data, control=amp_svc.control, markers=mk.data,
                               markers_control=mk.control, recorder=recorder or rec.control)
    amp.configure(**config)
    return amp


# -- live recordings read by mushu, wyrm and mne ----------------------------------------


@pytest.mark.parametrize("amp_name,config,unit", [
    ("rampamp", {"fs": FS, "channels": 8}, "a.u."),
    ("sinusamp", {"f": 7, "fs": FS, "channels": 4}, "µV"),
])
def test_a_recording_reads_bit_exact_with_mushu_wyrm_and_mne(services, amp_name, config, unit, tmp_path):
    rec_svc = services[2]
    with open_amp(services, amp_name, **config) as amp:
        c = record(amp, services[1].port, "session-1", [label for label, _, _ in TRICKY])
        result = amp.recording_result
    base = os.path.join(rec_svc.data_dir, "session-1")  # a relative name lands in the data directory
    assert result["base"] == base and result["n_samples"] == c.n and result["gaps"] == []
    # on the amp's host, the recorder read the blocks at the amp's local IPC endpoint
    amp_data = rec_svc.ctl().call("status")["amp_data"]
    assert amp_data.startswith("ipc://") and amp_data == services[0].ctl().call("status")["local_data"]["endpoint"]
    expected_markers = sorted(c.markers)  # markers on one sample: any order
    assert sorted(label for _, label in expected_markers) == sorted(label for label, _, _ in TRICKY)

    # (a) mushu's reader: everything exact
    r = load(base)
    assert r.channels == amp.get_channels() and r.fs == FS
    np.testing.assert_array_equal(bits(r.data), bits(c.data))
    assert sorted(r.marker_samples()) == expected_markers
    assert sorted(r.markers) == sorted((float("%f" % (s * 1000 / FS)), label) for s, label in expected_markers)
    assert r.meta["mushu"]["units"] == [unit if unit != "µV" else "uV"] * len(r.channels)

    # (b) wyrm's reader: same data and times; labels as TRICKY says
    data, t_ms, markers = wyrm_load_mushu_data(base + ".meta")
    np.testing.assert_array_equal(bits(data), bits(c.data))
    wyrm_view = {label: seen for label, seen, _ in TRICKY}
    got = sorted((round(ms * FS / 1000), label) for ms, label in markers)
    assert got == sorted((s, wyrm_view[label]) for s, label in expected_markers)
    assert all(ms == pytest.approx(t_ms[round(ms * FS / 1000)], abs=1e-6) for ms, _ in markers)

    # (c) mne's BrainVision reader: data scaled back to float32; markers at their samples
    raw, annotations = mne_brainvision(base)
    volts = 1e-6 if unit == "µV" else 1.0  # mne reads µV channels as eeg in V, "a.u." as misc, unscaled
    assert set(raw.get_channel_types()) == {"eeg" if unit == "µV" else "misc"}
    np.testing.assert_array_equal(bits((raw.get_data().T / volts).astype(np.float32)), bits(c.data))
    mne_view = {label: "Stimulus/" + seen for label, _, seen in TRICKY}
    assert sorted(annotations) == sorted((s, mne_view[label]) for s, label in expected_markers)

    # converted: EDF+, BDF+ and FIF read back by mne; a plot
    for fmt in ("edf", "bdf", "fif"):
        out = str(tmp_path / f"out-{fmt}_raw.fif" if fmt == "fif" else tmp_path / f"out.{fmt}")
        assert cli(["convert", base, "--to", fmt, "-o", out, "--quiet"]) == 0
        check_converted(out, fmt, c.data, expected_markers, volts)
    out = str(tmp_path / "out.xdf")
    assert cli(["convert", base, "--to", "xdf", "-o", out, "--quiet"]) == 0
    check_xdf(out, r, c.data, expected_markers)
    root = str(tmp_path / "bids")
    assert cli(["convert", base, "--to", "bids", "-o", root, "--subject", "07", "--task", "oddball", "--quiet"]) == 0
    check_bids(root, "07", "oddball", c.data, [(s, tsv_label(mne_view[label])) for s, label in expected_markers], volts)
    png = str(tmp_path / "plot.png")
    assert cli(["plot", base, "-o", png, "--start", "0", "--duration", "0.1"]) == 0
    check_png(png)


def check_converted(path, fmt, data, markers, volts, gaps=()):
    """Values within the format's resolution, annotations at the markers' samples, gaps spanned."""
    if fmt == "fif":
        raw = mne.io.read_raw_fif(path, preload=True, verbose="error")
        got = raw.get_data().T / np.array([ch["cal"] for ch in raw.info["chs"]])
        np.testing.assert_array_equal(bits(got.astype(np.float32)), bits(data))  # float32 as recorded
        expected = list(zip([s for s, _ in markers], fif_view([label for _, label in markers])))
    else:
        import edfio
        reader = mne.io.read_raw_edf if fmt == "edf" else mne.io.read_raw_bdf
        raw = reader(path, preload=True, verbose="error")
        got = raw.get_data().T[:len(data)] / volts
        header = (edfio.read_edf if fmt == "edf" else edfio.read_bdf)(path).signals
        step = np.array([(s.physical_max - s.physical_min) / (s.digital_max - s.digital_min) for s in header])
        finite = np.isfinite(data)
        assert np.all(np.abs(got - data)[finite] <= (step * 0.5001 + 1e-9 * np.abs(data))[finite])
        assert np.all(got[~finite] < np.nanmin(data, axis=0)[np.nonzero(~finite)[1]])  # gaps: below every sample
        expected = [(s, plain_label(label)) for s, label in markers]
    fs = raw.info["sfreq"]
    anns = [(round(o * fs), d) for o, d in zip(raw.annotations.onset, raw.annotations.description)]
    assert sorted(a for a in anns if not a[1].startswith("BAD_mushu")) == sorted(expected)
    spans = [(round(o * fs), round(d * fs)) for o, d, t in zip(raw.annotations.onset, raw.annotations.duration,
                                                               raw.annotations.description) if t == "BAD_mushu_gap"]
    assert spans == list(gaps)


def check_xdf(path, rec, data, markers, gaps=(), one_line=True):
    """pyxdf reads every sample bit-exact with its acquisition time, and the markers at their samples' times.

    ``one_line``: the stamps lie on one line, which pyxdf's dejittering keeps (a re-anchored clock does not).
    """
    import pyxdf
    for dejitter in (False, True) if one_line else (False,):
        streams, _ = pyxdf.load_xdf(path, synchronize_clocks=False, dejitter_timestamps=dejitter)
        by_type = {s["info"]["type"][0]: s for s in streams}
        eeg, mk = by_type["EEG"], by_type["Markers"]
        assert eeg["time_series"].dtype == np.float32 and float(eeg["info"]["nominal_srate"][0]) == rec.fs
        np.testing.assert_array_equal(bits(eeg["time_series"]), bits(data))
        times = rec.sample_times()
        assert np.all(np.diff(times) > 0)
        # the blocks' stamps lie on one line at the fitted or exact rate: dejittering keeps them
        np.testing.assert_allclose(eeg["time_stamps"], times / 1e9, rtol=0, atol=2e-6 if dejitter else 1e-9)
        if not dejitter:
            blocks = rec.block_times()
            np.testing.assert_array_equal(np.rint(eeg["time_stamps"][blocks["sample"]] * 1e9).astype(np.int64),
                                          blocks["t_ns"])
        placed = np.searchsorted(times / 1e9, mk["time_stamps"] - 1e-9)
        got = sorted(zip(placed.tolist(), [v[0] for v in mk["time_series"]]))
        expected = sorted(markers + [(g[0], f"mushu:gap {g[1]}") for g in gaps])
        assert got == expected
        labels = [ch["label"][0] for ch in eeg["info"]["desc"][0]["channels"][0]["channel"]]
        assert labels == rec.channels
        n_offsets = len(rec.meta["mushu"]["clock_offsets_ns"]["amp"])
        assert len(eeg["clock_times"]) == len(mk["clock_times"]) == n_offsets


def check_bids(root, subject, task, data, annotations, volts):
    """mne-bids reads the dataset: the samples as recorded, the markers as events at their samples."""
    import mne_bids
    raw = mne_bids.read_raw_bids(mne_bids.BIDSPath(subject=subject, task=task, datatype="eeg", root=root),
                                 verbose="error")
    got = raw.get_data().T / volts
    np.testing.assert_array_equal(bits(got.astype(np.float32)), bits(data))
    fs = raw.info["sfreq"]
    anns = [(round(o * fs), d) for o, d in zip(raw.annotations.onset, raw.annotations.description)]
    assert sorted(a for a in anns if a[1].startswith("Stimulus/")) == sorted((s, t.strip()) for s, t in annotations)
    events = os.path.join(root, f"sub-{subject}", "eeg", f"sub-{subject}_task-{task}_events.tsv")
    with open(events, encoding="utf-8", newline="") as f:  # the file itself: mne-bids strips what it reads
        head, *rows = [line.rstrip("\n").split("\t") for line in f]
    got = [(int(row[head.index("sample")]), row[head.index("trial_type")]) for row in rows]
    assert sorted(g for g in got if g[1].startswith("Stimulus/")) == sorted(annotations)
    for sidecar in ("dataset_description.json", "participants.tsv"):
        assert os.path.exists(os.path.join(root, sidecar))
    return raw


def fif_view(labels):
    """Labels as mne reads them from FIF: written as Latin-1 with other characters as ``&#N;``,
    decoded on reading only if one of them has six digits (a character from U+186A0 on)."""
    refs = [label.encode("latin1", "xmlcharrefreplace").decode("latin1") for label in labels]
    if any(re.search(r"&#[0-9a-fA-F]{6};", r) for r in refs):
        return [html.unescape(r) for r in refs]
    return refs


def check_png(path):
    import matplotlib.image
    assert os.path.getsize(path) > 0
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # not blank


# -- the writer and reader without services: newlines, control characters, gaps --------


def test_newlines_and_control_characters_are_escaped_and_read_back(tmp_path):
    base = str(tmp_path / "escapes")
    w = RecordingWriter.create(base, ["Ch,1", "Ch\\2"], 100.0, "rampamp", ["uV", "uV"], {"first_sample": 0})
    w.append(np.arange(200, dtype=np.float32).reshape(100, 2))
    labels = TRICKY + WRITER_ONLY
    for i, (label, _, _) in enumerate(labels):
        w.add_marker(i * 3, label, seq=i, session="s", t_ns=0)
    w.finish()
    r = load(base)
    assert r.marker_samples() == [(i * 3, label) for i, (label, _, _) in enumerate(labels)]
    _, _, markers = wyrm_load_mushu_data(base + ".meta")  # one line a marker: no newline got through
    assert [m for _, m in markers] == [wyrm for _, wyrm, _ in labels]
    raw, annotations = mne_brainvision(base)
    assert raw.ch_names == ["Ch,1", "Ch\\2"]
    assert annotations == [(i * 3, "Stimulus/" + seen) for i, (_, _, seen) in enumerate(labels)]


@pytest.mark.parametrize("order", ["in order", "late markers"])
def test_finished_marker_files_are_in_sample_order(tmp_path, order):
    base = str(tmp_path / "order")
    w = RecordingWriter.create(base, ["a"], 100.0, "rampamp", ["uV"], {"first_sample": 0})
    w.append(np.zeros((100, 1), np.float32))
    samples = [5, 10, 10, 40, 90] if order == "in order" else [5, 40, 10, 90, 10]
    for i, s in enumerate(samples):
        w.add_marker(s, f"m{i}", seq=i, session="s", t_ns=0)
    w.finish()
    expected = sorted((s, f"m{i}") for i, s in enumerate(samples))
    r = load(base)
    assert r.marker_samples() == sorted(r.marker_samples(), key=lambda m: m[0])
    assert sorted(r.marker_samples()) == expected
    with open(base + ".vmrk", encoding="utf-8") as f:
        lines = [line for line in f if line.startswith("Mk") and not line.startswith("Mk1=")]
    assert [int(line.split("=")[0][2:]) for line in lines] == list(range(2, 2 + len(samples)))
    assert [int(line.split(",")[2]) - 1 for line in lines] == sorted(samples)
    _, annotations = mne_brainvision(base)
    assert sorted(annotations) == [(s, "Stimulus/" + label) for s, label in expected]


def test_a_recording_with_a_gap_converts_with_the_gap_marked(tmp_path):
    base = str(tmp_path / "gappy")
    w = RecordingWriter.create(base, ["Fz", "Cz", "flat"], 250.0, "sinusamp", ["uV"] * 3, {"first_sample": 0})
    t = np.arange(1000)
    x = np.stack([50 * np.sin(t / 9), -3e3 + np.cos(t / 4), np.full(1000, 7.5)], axis=1).astype(np.float32)
    w.append(x[:400])
    w.add_marker(10, "first, with comma", seq=0, session="s", t_ns=0)
    w.append_gap(150, "test")
    w.append(x[550:])
    w.add_marker(999, "two\nlines ✓", seq=1, session="s", t_ns=0)
    w.finish()
    r = load(base)
    x[400:550] = np.nan
    np.testing.assert_array_equal(bits(r.data), bits(x))
    for fmt in ("edf", "bdf", "fif"):
        out = str(tmp_path / ("gappy_raw.fif" if fmt == "fif" else f"gappy.{fmt}"))
        assert cli(["convert", base, "--to", fmt, "--quiet"]) == 0 and os.path.exists(out)
        check_converted(out, fmt, r.data, r.marker_samples(), 1e-6, gaps=[(400, 150)])
    png = str(tmp_path / "gappy.png")
    assert cli(["plot", base + ".meta", "-o", png, "--channels", "Cz", "0"]) == 0
    check_png(png)


def test_xdf_and_bids_keep_sample_times_gaps_and_clock_offsets(tmp_path):
    base = str(tmp_path / "timed")
    offsets = [{"t_ns": 4_000_000_000 + i * 2_000_000_000, "offset_ns": 250_000 + i * 10, "rtt_ns": 90_000}
               for i in range(3)]
    w = RecordingWriter.create(base, ["Fz", "Cz"], 500.0, "gusbamp", ["uV"] * 2,
                               {"first_sample": 0, "amp_session": "s1", "stream": "eeg",
                                "clock_offsets_ns": {"amp": offsets, "markers": []}})
    period = 1e9 / 500 * (1 - 80e-6)  # a device 80 ppm fast, stamped by the fitted line
    x = (np.arange(2000 * 2, dtype=np.float32).reshape(2000, 2) - 1000) / 8
    for first in range(0, 800, 40):
        w.add_block_times(first, 40, 7_000_000_000 + round(first * period), 7_000_000_000 + round((first + 47) * period))
        w.append(x[first:first + 40])
    w.add_marker(30, "before, the gap", seq=0, session="s", t_ns=0)
    w.append_gap(200, "amp restarted")
    for first in range(1000, 2000, 40):
        w.add_block_times(first, 40, 9_000_000_000 + round((first - 1000) * period), None)
        w.append(x[first:first + 40])
    w.add_marker(1500, "after ✓", seq=1, session="s", t_ns=0)
    w.finish()
    r = load(base)
    times = r.sample_times()
    assert times[805] == 7_000_000_000 + round(760 * period) + round(45 * 1e9 / 500)  # a gap: the line before it
    assert times[1000] == 9_000_000_000
    x[800:1000] = np.nan
    assert cli(["convert", base, "--to", "xdf", "--quiet"]) == 0
    check_xdf(base + ".xdf", r, x, [(30, "before, the gap"), (1500, "after ✓")], gaps=[(800, 200)], one_line=False)
    import pyxdf
    streams, _ = pyxdf.load_xdf(base + ".xdf", synchronize_clocks=True, dejitter_timestamps=False)
    eeg = next(s for s in streams if s["info"]["type"][0] == "EEG")
    # on the recorder's clock: remote = local + offset, so the recorder's time is the amp's less the offset
    np.testing.assert_allclose(eeg["time_stamps"][[0, 1500]], (times[[0, 1500]] - 250_000) / 1e9, atol=1e-7)
    assert cli(["convert", base, "--to", "bids", "--task", "rest", "--line-freq", "50", "--quiet"]) == 0
    raw = check_bids(base + "_bids", "01", "rest", x, [(30, "Stimulus/before, the gap"), (1500, "Stimulus/after ✓")],
                     1e-6)
    gaps = [(round(o * 500), round(d * 500)) for o, d, t in zip(raw.annotations.onset, raw.annotations.duration,
                                                                raw.annotations.description) if t == "BAD_mushu_gap"]
    assert gaps == [(800, 200)] and raw.info["line_freq"] == 50
    assert cli(["convert", base, "--to", "bids", "--task", "rest", "--quiet"]) == 1  # never overwritten
    assert cli(["convert", base, "--to", "xdf", "--quiet"]) == 1


def test_convert_refuses_a_missing_recording_and_an_existing_output(tmp_path, capsys):
    assert cli(["convert", str(tmp_path / "nothing"), "--to", "edf"]) == 1
    assert "nothing.meta does not exist" in capsys.readouterr().err
    base = str(tmp_path / "small")
    w = RecordingWriter.create(base, ["a"], 10.0, "rampamp", ["a.u."], {"first_sample": 0})
    w.append(np.ones((20, 1), np.float32))
    w.finish()
    with open(base + ".edf", "w") as f:
        f.write("mine")
    assert cli(["convert", base, "--to", "edf"]) == 1
    assert "small.edf exists already" in capsys.readouterr().err
    assert open(base + ".edf").read() == "mine"
    assert cli(["plot", base, "-o", str(tmp_path / "x.png"), "--channels", "nope"]) == 1
    assert "no channel 'nope'" in capsys.readouterr().err


def test_libmushu_recordings_keep_their_raw_labels(tmp_path):
    base = str(tmp_path / "old")
    np.zeros((4, 2), np.float32).tofile(base + ".eeg")
    with open(base + ".meta", "w") as f:
        json.dump({"Channels": ["a", "b"], "Sampling Frequency": 100, "Amp": "RandomAmp"}, f)
    with open(base + ".marker", "w") as f:
        f.write("10.000000 C:\\new\\x41\n")
    assert load(base).markers == [(10.0, "C:\\new\\x41")]


SPECIAL = st.sampled_from("\\\n\r\t \x0b\x1c\x85\u3000x" + string.digits)


@given(st.text(alphabet=st.characters(codec="utf-8") | SPECIAL))
def test_escape_label_reverses_and_keeps_one_unstripped_line(label):
    text = escape_label(label)
    assert unescape_label(text) == label
    assert "\n" not in text and "\r" not in text and text == text.strip()
    assert "\n" not in plain_label(label) and "\r" not in plain_label(label)


# -- starting a recording ----------------------------------------------------------------


def test_an_existing_name_is_refused_and_acquisition_does_not_start(services):
    rec_svc = services[2]
    with open_amp(services, fs=FS, channels=2) as amp:
        amp.start("taken")
        amp.stop()
        with pytest.raises(FileExistsError) as err:
            amp.start("taken")
        assert os.path.join(rec_svc.data_dir, "taken.eeg") in str(err.value)
        assert amp.status()["state"] == "idle" and amp.recording is None


def test_a_filename_without_a_recorder_is_refused_naming_the_endpoint(services):
    from conftest import free_port
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    with open_amp(services, recorder=nowhere, fs=FS, channels=2) as amp:
        with pytest.raises(ServiceUnavailable, match=nowhere):
            amp.start("lost")
        assert amp.status()["state"] == "idle"


def test_an_absolute_path_is_used_as_given(services, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    with open_amp(services, fs=FS, channels=2) as amp:
        c = record(amp, services[1].port, str(target / "abs"), ["one"], min_samples=50)
        assert amp.recording_result["base"] == str(target / "abs")
    r = load(str(target / "abs"))
    np.testing.assert_array_equal(r.data, c.data)
    assert r.marker_samples() == c.markers
    assert not os.path.exists(os.path.join(services[2].data_dir, "abs.meta"))
