"""Helpers for tests and benchmarks that run mushu services on one machine."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; Windows and macOS use 49152-65535


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP and UDP port on ``host`` that nothing is bound to, for a service to bind next.

    The port is below the kernel's ephemeral range: a port the kernel hands
    out (``bind(0)``) can be given again, to the local end of any outgoing
    connection, before the service binds it. No port is handed out twice by
    one process.
    """
    low, _ = _ephemeral_range()
    first = 20000 if low > 21000 else 1024
    for _ in range(1000):
        port = random.randrange(first, low)
        if port in _handed_out:
            continue
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind((host, port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port found on {host} in {first}-{low - 1}")


def published_blocks(svc, amp_name: str, seconds: float, **configure) -> tuple[list, dict]:
    """Configure and start ``amp_name`` on the amp service ``svc`` (its ``data``/``control``
    endpoints), and return every block it published in ``seconds`` (decoded, headers included)
    and its session clock's status, then stop it."""
    import time

    import zmq

    import mushu_client
    from mushu_core.wire import data_topic, decode_message

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, data_topic("eeg"))
    sub.connect(svc.data)
    amp = mushu_client.get_amp(amp_name, data=svc.data, control=svc.control)
    blocks = []
    try:
        amp.configure(**configure)
        amp.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if sub.poll(100):
                blocks.append(decode_message(sub.recv_multipart()))
        clock = amp.status()["clock"]
        amp.stop()
    finally:
        amp.close()
        sub.close(0)
    return blocks, clock


def isolated_env(root: Path) -> dict[str, str]:
    """An environment of our own: no inherited MUSHU_*, free ports, run and data directories under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSHU_")}
    env.update({
        "MUSHU_CONFIG": str(root / "empty.toml"),
        "MUSHU_RUN_DIR": str(root / "run"),
        "MUSHU_DATA_DIR": str(root / "data"),
        "MUSHU_MARKERS_PORT": str(free_port()),
        "MUSHU_LOG_LEVEL": "WARNING",
    })
    for name in ("AMP_DATA", "AMP_CONTROL", "MARKERS_DATA", "MARKERS_CONTROL", "MARKERS_INGRESS", "RECORDER_CONTROL"):
        env[f"MUSHU_{name}"] = f"tcp://127.0.0.1:{free_port()}"
    return env


def mushu(*args, env, timeout=60, check=True, cwd=None) -> subprocess.CompletedProcess:
    """Run the ``mushu`` command with ``env``."""
    done = subprocess.run([sys.executable, "-m", "mushu_cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)
    if check and done.returncode != 0:
        raise AssertionError(f"mushu {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@contextlib.contextmanager
def mushu_up(root: Path, config: str = ""):
    """``mushu up`` in an :func:`isolated_env` under ``root`` with ``config`` as its mushu.toml, and this
    process's MUSHU_* settings the same while it runs (a client here finds the services); yields
    ``(env, what mushu up printed)``; ``mushu down`` and the settings as they were afterwards."""
    env = isolated_env(root)
    (root / "mushu.toml").write_text(config)
    env["MUSHU_CONFIG"] = str(root / "mushu.toml")
    saved = {k: v for k, v in os.environ.items() if k.startswith("MUSHU_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("MUSHU_")})
    try:
        yield env, mushu("up", env=env, timeout=120).stdout
    finally:
        mushu("down", env=env, check=False)
        for k in env:
            if k.startswith("MUSHU_"):
                os.environ.pop(k, None)
        os.environ.update(saved)
