"""The console script ``mushu-viewer`` (and ``mushu view``): serve the page of a stream or a recording."""

from __future__ import annotations

import json
import logging
import os
import sys

from mushu_core import process
from mushu_core.config import setting

log = logging.getLogger("mushu.viewer")


def main(argv=None):
    """Console script ``mushu-viewer``."""
    return process.main("mushu-viewer", "show a mushu stream (or a recording) in the browser", add_arguments,
                        build, argv)


def add_arguments(p):
    # Every default comes from mushu_core.config: argument > environment > mushu.toml > default.
    p.add_argument("recording", nargs="?", help="a recording to look at (its base path, or a name in the data "
                   "directory) instead of the live stream")
    p.add_argument("--host", help="where the page is served (env MUSHU_VIEWER_HOST; beyond loopback only with "
                   "a token)")
    p.add_argument("--port", type=int, help="the page's port (env MUSHU_VIEWER_PORT; 0: any free port)")
    p.add_argument("--tokens", help="a JSON file {\"viewer\": TOKEN, \"controller\": TOKEN}: read if it exists, "
                   "else written (mode 0600) with new tokens (env MUSHU_VIEWER_TOKENS; empty: new tokens each run)")
    p.add_argument("--amp-data", help="amp service blocks (env MUSHU_AMP_DATA)")
    p.add_argument("--amp-control", help="amp service control (env MUSHU_AMP_CONTROL)")
    p.add_argument("--markers-data", help="markers service bus (env MUSHU_MARKERS_DATA)")
    p.add_argument("--markers-control", help="markers service control (env MUSHU_MARKERS_CONTROL)")
    p.add_argument("--recorder", help="recorder control (env MUSHU_RECORDER_CONTROL)")
    p.add_argument("--stream", help="amp stream name (env MUSHU_STREAM)")


def tokens(path: str | None) -> dict | None:
    """The roles' tokens from ``path``; None (new ones) if there is no such file. A new file is written later."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        found = json.load(f)
    if not isinstance(found, dict) or not all(isinstance(v, str) and len(v) >= 16 for v in found.values()):
        raise ValueError(f"{path}: expected {{\"viewer\": TOKEN, \"controller\": TOKEN}}, tokens of 16 characters "
                         "or more; delete it to have new ones made")
    return found


def _recording_path(name: str) -> str:
    if os.path.exists(name + ".meta") or os.path.exists(name + ".vhdr") or os.path.isabs(name):
        return name
    return os.path.join(setting("MUSHU_DATA_DIR"), name)


def build(a):
    from .core import Access  # aiohttp: an optional dependency, imported with the service
    from .web import Viewer
    token_file = setting("MUSHU_VIEWER_TOKENS", a.tokens)
    access = Access(tokens(token_file))
    if token_file and not os.path.exists(token_file):
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(access.tokens, f)
    if a.recording:
        from .offline import RecordingSource
        source = RecordingSource(_recording_path(a.recording))
    else:
        from .follower import BusThread
        source = BusThread({
            "amp_data": setting("MUSHU_AMP_DATA", a.amp_data), "amp_control": setting("MUSHU_AMP_CONTROL", a.amp_control),
            "markers_data": setting("MUSHU_MARKERS_DATA", a.markers_data),
            "markers_control": setting("MUSHU_MARKERS_CONTROL", a.markers_control),
            "recorder": setting("MUSHU_RECORDER_CONTROL", a.recorder),
            "markers_host": setting("MUSHU_MARKERS_HOST"), "markers_port": setting("MUSHU_MARKERS_PORT")},
            stream=setting("MUSHU_STREAM", a.stream), marker_stream=setting("MUSHU_MARKER_STREAM"))
    viewer = Viewer(source, access, setting("MUSHU_VIEWER_HOST", a.host), int(setting("MUSHU_VIEWER_PORT", None if a.port is None else str(a.port))))
    return _Announced(viewer)


class _Announced:
    """The viewer, which prints its page's URLs once it listens."""

    def __init__(self, viewer):
        self.viewer = viewer

    def run(self):
        import threading

        def announce():
            if self.viewer.ready.wait(30):
                urls = self.viewer.urls()
                print(f"mushu view: look at {urls['viewer']}\n"
                      f"            control at {urls['controller']} (records and sends markers; keep it to yourself)",
                      flush=True)
        threading.Thread(target=announce, daemon=True).start()
        self.viewer.run()

    def shutdown(self):
        self.viewer.shutdown()


if __name__ == "__main__":
    sys.exit(main())
