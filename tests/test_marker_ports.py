"""The marker port's allowlist and limits, against a real markers service process.

Linux routes all of 127.0.0.0/8 to the loopback interface, so a socket
bound to 127.0.0.2 or 127.0.0.3 before it connects is a second and a third
sender host.
"""

from __future__ import annotations

import socket
import time

import pytest
from conftest import free_port
from test_markers_service import HOST, start_markers  # noqa: F401 (a fixture)

from services.markers.senders import AddressList, SenderPolicy, TokenBuckets, sender_address


def start_on_all_interfaces(start_markers, *extra):
    """A markers service bound to 0.0.0.0, on a port free there for TCP and UDP (the last --port counts)."""
    port = free_port("0.0.0.0")
    svc = start_markers("--host", "0.0.0.0", "--port", str(port), *extra)
    svc.port = port
    return svc


def tcp_from(src: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(5)
    s.connect((HOST, port))
    return s


def udp_from(src: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    return s


def closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


# -- pure parts ----------------------------------------------------------------


def test_address_lists_match_ipv4_ipv6_and_mapped_addresses():
    allow = AddressList("10.0.0.5, 192.168.1.0/24,fd00::/8")
    assert sender_address("192.168.1.77") in allow and sender_address("10.0.0.5") in allow
    assert sender_address("::ffff:192.168.1.9") in allow  # a dual-stack socket's view of an IPv4 peer
    assert sender_address("fd00::1") in allow and sender_address("fe80::1%eth0") not in allow
    assert sender_address("10.0.0.6") not in allow and not AddressList("") and str(allow).count(",") == 2
    with pytest.raises(ValueError, match="MUSHU_MARKERS_ALLOW: 'stim-pc' is not an IP address"):
        AddressList("10.0.0.1,stim-pc", "MUSHU_MARKERS_ALLOW")


def test_token_bucket_allows_a_burst_then_the_rate_and_forgets_idle_senders():
    buckets = TokenBuckets(rate=100, burst=10, max_buckets=3)
    a = sender_address("10.0.0.1")
    assert sum(buckets.take(a, 0) for _ in range(50)) == 10
    assert sum(buckets.take(a, 100_000_000) for _ in range(50)) == 10  # 0.1 s at 100/s
    for i in range(2, 6):  # more senders than buckets: the oldest go
        buckets.take(sender_address(f"10.0.0.{i}"), 100_000_000)
    assert len(buckets) == 3
    buckets.sweep(10**9)
    assert len(buckets) == 0
    assert all(TokenBuckets(0, 1).take(a, 0) for _ in range(10_000))  # rate 0: no limit


def test_sender_policy_names_the_counter_of_each_refusal():
    policy = SenderPolicy(AddressList("10.0.0.0/24"), max_connections=3, max_connections_per_sender=2)
    a, b = sender_address("10.0.0.1"), sender_address("10.0.0.2")
    assert policy.refuse_connection(sender_address("10.0.1.1")) == "refused_address"
    policy.opened(a), policy.opened(a)
    assert policy.refuse_connection(a) == "connections_refused_sender"
    policy.opened(b)
    assert policy.refuse_connection(b) == "connections_refused"
    policy.closed(a)
    assert policy.refuse_connection(a) is None and policy.connections == 2


# -- the service ------------------------------------------------------------------


def test_an_allowlisted_sender_is_accepted_and_another_refused(start_markers):
    svc = start_on_all_interfaces(start_markers, "--allow", "127.0.0.1/32")
    sub = svc.subscribe()
    rogue = tcp_from("127.0.0.2", svc.port)
    assert closed_by_peer(rogue)  # closed at accept
    rogue.close()
    with udp_from("127.0.0.2") as u:
        u.sendto(b"udp-rogue\n", (HOST, svc.port))
    with tcp_from("127.0.0.1", svc.port) as s:
        s.sendall(b"tcp-ok\n")
        with udp_from("127.0.0.1") as u:
            u.sendto(b"udp-ok\n", (HOST, svc.port))
        sub.wait_labels(["tcp-ok", "udp-ok"])
    assert sorted(m.label for m in sub.markers) == ["tcp-ok", "udp-ok"]
    st = svc.status()
    assert st["counts"]["refused_address"] == 2 and st["limits"]["allow"] == "127.0.0.1/32"
    log = svc.log()
    assert "tcp:127.0.0.2" in log and "udp:127.0.0.2" in log and "allowlist" in log
    assert "beyond loopback" not in log


def test_beyond_loopback_without_an_allowlist_warns_and_accepts(start_markers):
    svc = start_on_all_interfaces(start_markers)
    sub = svc.subscribe()
    with tcp_from("127.0.0.2", svc.port) as s:
        s.sendall(b"lab-pc\n")
        sub.wait_labels(["lab-pc"])
    assert "beyond loopback, without an allowlist" in svc.log() and "MUSHU_MARKERS_ALLOW" in svc.log()


def test_an_over_rate_sender_is_refused_while_a_normal_one_loses_nothing(start_markers):
    svc = start_markers("--rate", "100", "--burst", "20", "--rate-exempt", "none")
    sub = svc.subscribe()
    n_flood = 2000
    normal = tcp_from("127.0.0.3", svc.port)
    flood = tcp_from("127.0.0.2", svc.port)
    flood.sendall(b"".join(b"flood-%d\n" % i for i in range(n_flood)))
    sent = []
    for i in range(30):  # 50 markers/s, half the rate
        normal.sendall(b"normal-%d\n" % i)
        sent.append(f"normal-{i}")
        time.sleep(0.02)
    sub.wait_labels(sent)
    sub.wait_for(lambda: sum(svc.counts()[k] for k in ("rate_limited", "tcp_markers")) == n_flood + len(sent),
                 10, "every flood marker published or refused")
    normal.close(), flood.close()
    assert [m.label for m in sub.markers if m.label.startswith("normal")] == sent
    published = sum(m.label.startswith("flood") for m in sub.markers)
    assert 20 <= published < 200  # the burst and what the rate refilled
    counts = svc.counts()
    assert counts["rate_limited"] == n_flood - published
    assert "over 100 markers/s" in svc.log()


def test_an_overlong_label_is_refused_and_later_markers_still_work(start_markers):
    svc = start_markers("--max-label-bytes", "16")
    sub = svc.subscribe()
    with tcp_from(HOST, svc.port) as s:
        s.sendall(b"x" * 17 + b"\n" + "ü".encode() * 8 + b"\nafter\n")
        with udp_from(HOST) as u:
            u.sendto(b"y" * 40 + b"\n", (HOST, svc.port))
            u.sendto(b"sixteen-bytes-ok", (HOST, svc.port))
        sub.wait_labels(["after", "sixteen-bytes-ok", "ü" * 8])
    assert svc.counts()["too_long"] == 2 and svc.status()["limits"]["max_label_bytes"] == 16
    assert not any(m.label.startswith(("x", "y")) for m in sub.markers)


def test_connections_per_sender_are_limited(start_markers):
    svc = start_markers("--max-connections-per-sender", "3")
    sub = svc.subscribe()
    mine = [tcp_from("127.0.0.2", svc.port) for _ in range(5)]
    assert sum(closed_by_peer(s) for s in mine[3:]) == 2
    with tcp_from("127.0.0.3", svc.port) as other:
        other.sendall(b"other host\n")
        mine[0].sendall(b"first host\n")
        sub.wait_labels(["other host", "first host"])
    for s in mine:
        s.close()
    st = svc.status()
    assert st["counts"]["connections_refused_sender"] == 2 and st["counts"]["connections_refused"] == 0
    assert st["limits"]["max_connections_per_sender"] == 3
    assert "limit per sender" in svc.log()


def test_mushu_status_shows_the_refusal_counters():
    from mushu_cli.status import _markers_details
    from mushu_markers.core import MarkersCore

    core = MarkersCore(policy=SenderPolicy(AddressList("10.0.0.1")))
    core.ingest_datagram(b"x\n", 1, "udp:10.0.0.2:5", sender_address("10.0.0.2"))
    assert core.admit_connection(sender_address("10.0.0.3"), "tcp:10.0.0.3:6") is False
    text = _markers_details(core.cmd_status(), {})
    assert "refused address 2" in text and "0 markers" in text
