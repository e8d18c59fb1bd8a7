"""A small lab of Linux network namespaces: amp, markers, recorder and client each on its own host.

The test creates the namespaces, a bridge between them and one address per
host (a private range that exists only inside these namespaces), runs each
service in its namespace, and removes everything afterwards. The markers
service runs with an artificial clock offset of 100 s, as if its host's clock
were another one; the client and the recorder estimate the offset over the
network. The kernel's netem qdisc adds about 1 ms of delay with jitter to
every link where the kernel has it (the machines this runs on may not).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np

from mushu_amp.drivers.rampamp import ramp
from mushu_core.recordings import load

PREFIX = f"mzl{os.getpid() % 10000}"
SUBNET = "10.231.77"
HOSTS = {"amp": 2, "markers": 3, "recorder": 4, "client": 5}
FS = 1000


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


class Lab:
    """Namespaces joined by a bridge in a switch namespace, one per host of ``hosts`` (name: address byte)."""

    def __init__(self, hosts=HOSTS):
        self.hosts = hosts
        self.switch = f"{PREFIX}-sw"
        self.namespaces = []
        self.netem = True

    def ns(self, host):
        return f"{PREFIX}-{host}"

    def ip(self, host):
        return f"{SUBNET}.{self.hosts[host]}"

    def up(self):
        sh("ip", "netns", "add", self.switch)
        self.namespaces.append(self.switch)
        sh("ip", "netns", "exec", self.switch, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", self.switch, "ip", "link", "set", "br0", "up")
        for host in self.hosts:
            ns, a, b = self.ns(host), f"{PREFIX}{host[:3]}a", f"{PREFIX}{host[:3]}b"
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "netns", ns)
            sh("ip", "link", "set", b, "netns", self.switch)
            sh("ip", "netns", "exec", self.switch, "ip", "link", "set", b, "master", "br0")
            sh("ip", "netns", "exec", self.switch, "ip", "link", "set", b, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.ip(host)}/24", "dev", a)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", a, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            netem = sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", a, "root", "netem",
                       "delay", "1ms", "200us", check=False)
            self.netem = self.netem and netem.returncode == 0

    def down(self, procs=()):
        """Stop ``procs`` (TERM, then KILL after 5 s) and remove the namespaces."""
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)  # removes its veth ends too
        self.namespaces = []

    def run(self, host, *cmd, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.ns(host), *cmd], **kw)


def can_make_namespaces():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"{PREFIX}-probe"
    ok = sh("ip", "netns", "add", probe, check=False).returncode == 0
    sh("ip", "netns", "del", probe, check=False)
    return ok


CLIENT = textwrap.dedent("""
    import json, os, sys, time, zmq
    import mushu_client
    from mushu_core.wire import Block, decode_message
    e = json.loads(sys.argv[1])
    raw = zmq.Context.instance().socket(zmq.SUB)
    raw.setsockopt(zmq.RCVHWM, 0)
    raw.connect(e["amp_data"]); raw.subscribe(b"data/")
    amp = mushu_client.get_amp("rampamp", data=e["amp_data"], control=e["amp_control"], markers=e["markers_data"],
                               markers_control=e["markers_control"], recorder=e["recorder"], marker_grace=0.02)
    amp.configure(fs=1000, channels=8)
    amp.start("lab")
    open(e["started"], "w").close()
    n, markers, blocks, chunks = 0, [], [], []
    def read():
        global n
        data, mk = amp.get_data()
        markers.extend([n + round(ms), label] for ms, label in mk)
        n += len(data); chunks.append(data)
        while raw.poll(0):
            m = decode_message(raw.recv_multipart())
            if isinstance(m, Block):
                blocks.append([m.header.first_sample, m.header.t_ns, m.header.n_samples])
        return len(data)
    t_end = time.monotonic() + e["seconds"]
    while time.monotonic() < t_end or not os.path.exists(e["sent"]):  # every marker within the session
        read()
    t_end = time.monotonic() + 0.2  # the last one's way to this client
    while time.monotonic() < t_end:
        read()
    amp.stop()
    while read():
        pass
    import numpy as np
    np.save(e["data"], np.concatenate(chunks))
    print(json.dumps({"n": n, "markers": markers, "blocks": blocks, "result": amp.recording_result,
                      "counts": amp.marker_counts, "offsets": [amp.amp_clock.offset_ns, amp.markers_clock.offset_ns],
                      "rtts": [amp.amp_clock.rtt_ns, amp.markers_clock.rtt_ns]}))
""")

SENDER = textwrap.dedent("""
    import json, os, sys, time
    import mushu_client
    host, port, started, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    while not os.path.exists(started):
        time.sleep(0.01)
    time.sleep(0.3)
    sender = mushu_client.MarkerSender(host, port)
    sent = []
    for i in range(count):
        # the event happens at the send, between these two readings of this host's real clock
        before = time.monotonic_ns()
        sender.send(str(i))
        sent.append([str(i), before, time.monotonic_ns()])
        time.sleep(0.02 + (i % 7) * 0.003)
    sender.close()
    with open(out + ".tmp", "w") as f:
        json.dump(sent, f)
    os.replace(out + ".tmp", out)  # the client reads on until this file is there
""")


def test_a_lab_of_hosts_with_a_skewed_markers_clock(tmp_path):
    assert can_make_namespaces(), "this test needs root and iproute2 (ip netns) to build its lab"
    lab = Lab()
    procs = []
    try:
        lab.up()
        ip = lab.ip
        e = {"amp_data": f"tcp://{ip('amp')}:5501", "amp_control": f"tcp://{ip('amp')}:5502",
             "markers_data": f"tcp://{ip('markers')}:5503", "markers_control": f"tcp://{ip('markers')}:5504",
             "recorder": f"tcp://{ip('recorder')}:5505", "seconds": 4.0,
             "started": str(tmp_path / "started"), "data": str(tmp_path / "client.npy"),
             "sent": str(tmp_path / "sent.json")}
        py = sys.executable
        quiet = {"stderr": subprocess.DEVNULL}
        procs.append(lab.run("amp", py, "-m", "mushu_amp", "--data", e["amp_data"], "--control",
                             e["amp_control"], "--log-level", "ERROR", **quiet))
        procs.append(lab.run("markers", py, "-m", "mushu_markers", "--host", ip("markers"), "--port", "12344",
                             "--data", e["markers_data"], "--control", e["markers_control"],
                             "--ingress", f"tcp://{ip('markers')}:5506", "--clock-offset", "100",
                             "--log-level", "ERROR", **quiet))
        procs.append(lab.run("recorder", py, "-m", "mushu_recorder", "--control", e["recorder"],
                             "--data-dir", str(tmp_path / "rec"), "--amp-data", e["amp_data"],
                             "--amp-control", e["amp_control"], "--markers-data", e["markers_data"],
                             "--markers-control", e["markers_control"], "--log-level", "ERROR", **quiet))
        # the namespaces are reachable from here only through their own addresses: ask from inside
        for host, endpoint, proc in (("amp", e["amp_control"], procs[0]), ("markers", e["markers_control"], procs[1]),
                                     ("recorder", e["recorder"], procs[2])):
            probe = lab.run("client", py, "-c", "import sys; from mushu_core.control import ControlClient as C; "
                            f"print(C({endpoint!r}, 10).call('ping'))", stdout=subprocess.PIPE, text=True)
            out, _ = probe.communicate(timeout=30)
            assert probe.returncode == 0 and host in out, (host, out)
        (tmp_path / "client.py").write_text(CLIENT)
        (tmp_path / "sender.py").write_text(SENDER)
        sender = lab.run("markers", py, str(tmp_path / "sender.py"), ip("markers"), "12344", e["started"], "120",
                         str(tmp_path / "sent.json"))
        client = lab.run("client", py, str(tmp_path / "client.py"), json.dumps(e), stdout=subprocess.PIPE, text=True)
        out, _ = client.communicate(timeout=120)
        assert client.returncode == 0
        sender.wait(30)
        r = json.loads(out)
    finally:
        lab.down(procs)
    assert not [ns for ns in sh("ip", "netns", "list").stdout.split() if ns.startswith(PREFIX)]

    # the markers service's clock is 100 s ahead, as estimated over the network
    assert abs(r["offsets"][1] - r["offsets"][0] - 100e9) < 1e6
    # each marker on the first sample acquired at or after the moment it was sent, within one sample
    blocks = np.array(r["blocks"])
    sample_times = np.concatenate([t + np.arange(n) * 1e6 for _, t, n in blocks])
    first = blocks[0, 0]
    assert len(r["markers"]) == 120 and r["counts"]["late"] == 0
    sent = {label: (before, after) for label, before, after in json.load(open(tmp_path / "sent.json"))}
    errors = []
    for sample, label in r["markers"]:
        before, after = sent[label]
        earliest = first + int(np.searchsorted(sample_times, before))
        latest = first + int(np.searchsorted(sample_times, after))
        errors.append(sample - earliest if sample < earliest else max(0, sample - latest))
    print(f"netem: {lab.netem}; marker error beyond the send's own duration, in samples: max {max(errors)}; "
          f"clock rtt amp {r['rtts'][0] / 1e3:.0f} us, markers {r['rtts'][1] / 1e3:.0f} us")
    assert max(abs(x) for x in errors) <= 1
    # the recording holds every sample the client received, and the same markers
    data = np.load(e["data"])
    rec = load(r["result"]["base"])
    np.testing.assert_array_equal(rec.data, data)
    np.testing.assert_array_equal(data, ramp(0, len(data), 8))
    # the same markers; each consumer estimated the markers host's clock on its own (to within half a
    # round trip), so a marker right at a sample boundary may sit one sample apart in the two
    recorded = [[round(ms), label] for ms, label in rec.markers]
    assert [label for _, label in recorded] == [label for _, label in r["markers"]]
    assert max(abs(a - b) for (a, _), (b, _) in zip(recorded, r["markers"])) <= 1


# -- a session of three devices -----------------------------------------------------------------------

STREAM_HOSTS = {"eeg": 2, "emg": 3, "lsl": 4, "markers": 5, "recorder": 6, "client": 7}
#: stream -> (driver, configure(), sampling rate, channels, its amp host's clock offset in s)
STREAMS = {"eeg": ("rampamp", {"fs": 1000, "channels": 32}, 1000, 32, 0),
           "emg": ("rampamp", {"fs": 2000, "channels": 8}, 2000, 8, 7),
           "gaze": ("lslamp", {"name": "lab-gaze", "type": "Gaze", "timeout": 1.0}, 60, 3, 0)}
HOST_OF = {"eeg": "eeg", "emg": "emg", "gaze": "lsl"}

OUTLET = textwrap.dedent("""
    import sys, time, pylsl
    name, fs, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    info = pylsl.StreamInfo(name, "Gaze", 3, fs, "float32", name + "-src")
    channels = info.desc().append_child("channels")
    for label in ("x", "y", "pupil"):
        ch = channels.append_child("channel")
        ch.append_child_value("label", label)
        ch.append_child_value("unit", "a.u.")
    outlet = pylsl.StreamOutlet(info)
    start, k = pylsl.local_clock(), 0
    while pylsl.local_clock() < start + seconds:
        due = int((pylsl.local_clock() - start) * fs) + 1
        if due > k:  # sample i: acquired at start + i / fs, values i, i + 1/4, i + 1/2
            outlet.push_chunk([[i, i + 0.25, i + 0.5] for i in range(k, due)], [start + i / fs for i in range(k, due)])
            k = due
        time.sleep(0.002)
""")

STREAMS_CLIENT = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    import mushu_client
    e = json.loads(sys.argv[1])
    amps = []
    for s in e["streams"]:
        amp = mushu_client.get_amp(s["driver"], data=s["data"], control=s["control"], markers=e["markers_data"],
                                   markers_control=e["markers_control"], recorder=s["recorder"], timeout=10.0)  # lslamp looks for its outlet in configure
        amp.configure(**s["configure"])
        amps.append(amp)
    streams = mushu_client.Streams(amps)
    streams.start("lab")
    open(e["started"], "w").close()
    got = {s: {"n": 0, "markers": [], "chunks": [], "times": []} for s in streams.amps}
    def read():
        chunk = streams.get_data()
        for s, d in chunk.items():
            g, fs = got[s], streams.amps[s].get_sampling_frequency()
            g["markers"] += [[g["n"] + round(ms * fs / 1000), label] for ms, label in d.markers]
            g["chunks"].append(d.data)
            g["times"].append(d.times_ns)
            g["n"] += len(d.data)
        return any(len(d.data) for d in chunk.values())
    t_end, kill_at = time.monotonic() + e["seconds"], time.monotonic() + e["seconds"] / 2
    while time.monotonic() < t_end or not os.path.exists(e["sent"]):  # every marker within the session
        read()
        if time.monotonic() > kill_at and not os.path.exists(e["kill"]):
            open(e["kill"], "w").close()  # the test kills a recorder now, and starts it again
    t_end = time.monotonic() + 0.3  # the last marker's way to this client
    while time.monotonic() < t_end:
        read()
    streams.stop()
    while read():
        pass
    for s, g in got.items():
        np.save(f"{e['out']}-{s}.npy", np.concatenate(g["chunks"]))
        np.save(f"{e['out']}-{s}-times.npy", np.concatenate(g["times"]))
    print(json.dumps({"markers": {s: g["markers"] for s, g in got.items()},
                      "results": {s: a.recording_result for s, a in streams.amps.items()},
                      "gaps": {s: a.gaps for s, a in streams.amps.items()},
                      "first": {s: a.first_sample for s, a in streams.amps.items()}}))
""")


def test_a_session_of_three_devices_on_hosts_with_skewed_clocks(tmp_path):
    """EEG 1 kHz x 32, EMG 2 kHz x 8 on a host 7 s ahead, an LSL outlet at 60 Hz x 3 through lslamp, markers on
    a host 100 s ahead: each marker on the right sample of every stream, every sample recorded with one
    SIGKILL of a recorder, the XDF's times the client's, the BIDS export readable."""
    assert can_make_namespaces(), "this test needs root and iproute2 (ip netns) to build its lab"
    import mne_bids
    import pyxdf

    from mushu_cli.conversion import convert
    from mushu_core.recordings import stream_recordings
    lab = Lab(STREAM_HOSTS)
    procs, recorders = [], {}
    py, quiet = sys.executable, {"stderr": subprocess.DEVNULL}
    ip = lab.ip
    e = {"markers_data": f"tcp://{ip('markers')}:5503", "markers_control": f"tcp://{ip('markers')}:5504",
         "seconds": 5.0, "started": str(tmp_path / "started"), "sent": str(tmp_path / "sent.json"),
         "kill": str(tmp_path / "kill"), "out": str(tmp_path / "client"), "streams": []}
    for port, (stream, (driver, configure, *_rest)) in enumerate(STREAMS.items()):
        host = ip(HOST_OF[stream])
        e["streams"].append({"stream": stream, "driver": driver, "configure": configure,
                             "data": f"tcp://{host}:{5510 + 2 * port}", "control": f"tcp://{host}:{5511 + 2 * port}",
                             "recorder": f"tcp://{ip('recorder')}:{5520 + port}"})

    def recorder(s):
        return lab.run("recorder", py, "-m", "mushu_recorder", "--control", s["recorder"], "--stream", s["stream"],
                       "--data-dir", str(tmp_path / "rec"), "--amp-data", s["data"], "--amp-control", s["control"],
                       "--markers-data", e["markers_data"], "--markers-control", e["markers_control"],
                       "--log-level", "ERROR", **quiet)
    try:
        lab.up()
        procs.append(lab.run("lsl", py, "-c", OUTLET, "lab-gaze", "60", "60", **quiet))
        procs.append(lab.run("markers", py, "-m", "mushu_markers", "--host", ip("markers"), "--port", "12344",
                             "--data", e["markers_data"], "--control", e["markers_control"],
                             "--ingress", f"tcp://{ip('markers')}:5506", "--clock-offset", "100",
                             "--log-level", "ERROR", **quiet))
        for s in e["streams"]:
            offset = STREAMS[s["stream"]][4]
            procs.append(lab.run(HOST_OF[s["stream"]], py, "-m", "mushu_amp", "--data", s["data"], "--control",
                                 s["control"], "--stream", s["stream"], "--clock-offset", str(offset),
                                 "--log-level", "ERROR", **quiet))
            recorders[s["stream"]] = recorder(s)
        for s in e["streams"]:  # reachable from inside the namespaces only: ask from the client's host
            for endpoint in (s["control"], s["recorder"]):
                probe = lab.run("client", py, "-c", "from mushu_core.control import ControlClient as C; "
                                f"print(C({endpoint!r}, 10).call('ping'))", stdout=subprocess.PIPE, text=True)
                assert probe.communicate(timeout=30)[0] and probe.returncode == 0, endpoint
        (tmp_path / "client.py").write_text(STREAMS_CLIENT)
        (tmp_path / "sender.py").write_text(SENDER)
        sender = lab.run("markers", py, str(tmp_path / "sender.py"), ip("markers"), "12344", e["started"], "80",
                         str(tmp_path / "sent.json"))
        client = lab.run("client", py, str(tmp_path / "client.py"), json.dumps(e), stdout=subprocess.PIPE, text=True)
        while client.poll() is None and not os.path.exists(e["kill"]):
            time.sleep(0.05)  # the client says when: halfway through its recording
        emg = next(s for s in e["streams"] if s["stream"] == "emg")
        recorders["emg"].kill()  # SIGKILL, mid-recording
        recorders["emg"].wait(5)
        recorders["emg"] = recorder(emg)
        out, _ = client.communicate(timeout=120)
        assert client.returncode == 0
        sender.wait(30)
        r = json.loads(out)
    finally:
        lab.down([*procs, *recorders.values()])
    assert not [ns for ns in sh("ip", "netns", "list").stdout.split() if ns.startswith(PREFIX)]

    sent = {label: (before, after) for label, before, after in json.load(open(e["sent"]))}
    base = r["results"]["eeg"]["base"]
    assert stream_recordings(base) == {"eeg": base, "emg": base + "-emg", "gaze": base + "-gaze"}
    for stream, (driver, _, fs, channels, _) in STREAMS.items():
        data, times = np.load(f"{e['out']}-{stream}.npy"), np.load(f"{e['out']}-{stream}-times.npy")
        assert r["gaps"][stream] == [] and len(data) > 3 * fs, (stream, len(data))
        if driver == "rampamp":
            np.testing.assert_array_equal(data, ramp(r["first"][stream], len(data), channels))
        else:  # the outlet's sample i holds i, i + 1/4, i + 1/2: consecutive, none lost
            np.testing.assert_array_equal(data[:, 0], data[0, 0] + np.arange(len(data)))
        period = 1e9 / fs
        assert abs(np.median(np.diff(times)) - period) < 0.01 * period, stream
        # every marker on the first sample acquired at or after its send, within a sample period of the
        # stream's rate (and the clocks' estimates over the network)
        markers = r["markers"][stream]
        assert sorted(label for _, label in markers) == sorted(sent), stream
        for sample, label in markers:
            before, after = sent[label]
            assert times[sample] >= before - 1_000_000, (stream, label, (times[sample] - before) / 1e6)
            assert times[sample] - period <= after + 1_000_000, (stream, label, (times[sample] - after) / 1e6)
        # the recording holds every sample the client got, bit for bit, and the same markers
        rec = load(stream_recordings(base)[stream])
        np.testing.assert_array_equal(rec.data, data)
        assert rec.meta["mushu"]["gaps"] == []
        # the recorder's host estimates the clocks' offsets on its own: a marker within a sample's width of a
        # boundary may go to the neighbouring sample there (within one sample period, as on the client)
        recorded, client_has = sorted(rec.marker_samples(), key=lambda m: m[1]), sorted(markers, key=lambda m: m[1])
        assert [label for _, label in recorded] == [label for _, label in client_has], stream
        assert max(abs(a - b) for (a, _), (b, _) in zip(recorded, client_has)) <= 1, stream

    session = json.loads(open(base + ".session.json").read())  # each stream's first sample on one clock
    assert set(session["streams"]) == set(STREAMS) and len({v["clock"] for v in session["streams"].values()}) == 1
    for stream, entry in session["streams"].items():
        times = np.load(f"{e['out']}-{stream}-times.npy")
        assert entry["n_samples"] == len(times) and abs(entry["first_sample_ns"] - times[0]) < 1_000_000, stream
    xdf = convert(base, "xdf", str(tmp_path / "lab.xdf"), progress=False)
    loaded, _ = pyxdf.load_xdf(xdf, dejitter_timestamps=False)  # clocks synchronised: the recorder's
    by_name = {s["info"]["name"][0]: s for s in loaded}
    for stream in STREAMS:
        times = np.load(f"{e['out']}-{stream}-times.npy") / 1e9
        stamps = by_name[stream]["time_stamps"]
        assert len(stamps) == len(times) and np.abs(stamps - times).max() < 1e-3, stream
    root = str(tmp_path / "bids")
    convert(base, "bids", root, progress=False, subject="01", task="lab")
    raw = mne_bids.read_raw_bids(mne_bids.BIDSPath(subject="01", task="lab", datatype="eeg", root=root),
                                 verbose="error")
    assert raw.n_times == len(np.load(f"{e['out']}-eeg.npy")) and raw.info["sfreq"] == 1000
    assert sum(d.startswith("Stimulus/") for d in raw.annotations.description) == len(sent)
