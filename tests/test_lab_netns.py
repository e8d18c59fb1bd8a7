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
    """Namespaces joined by a bridge in a switch namespace."""

    def __init__(self):
        self.switch = f"{PREFIX}-sw"
        self.namespaces = []
        self.netem = True

    def ns(self, host):
        return f"{PREFIX}-{host}"

    def ip(self, host):
        return f"{SUBNET}.{HOSTS[host]}"

    def up(self):
        sh("ip", "netns", "add", self.switch)
        self.namespaces.append(self.switch)
        sh("ip", "netns", "exec", self.switch, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", self.switch, "ip", "link", "set", "br0", "up")
        for host in HOSTS:
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

    def down(self):
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
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        lab.down()
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
