"""The console script ``mushu-lsl-bridge``: runs an :class:`~mushu_lslbridge.bridge.LSLBridge`."""

from __future__ import annotations

import argparse
import logging
import sys

from mushu_core import process
from mushu_core.config import setting

log = logging.getLogger("mushu.lslbridge")


def main(argv=None):
    """Console script ``mushu-lsl-bridge``."""
    return process.main("mushu-lsl-bridge", "publish a mushu stream and its markers as LSL outlets", _arguments,
                        _build, argv)


def _arguments(p: argparse.ArgumentParser):
    # Every default comes from mushu_core.config: argument > environment > mushu.toml > default.
    p.add_argument("--amp-data", help="amp service blocks (env MUSHU_AMP_DATA)")
    p.add_argument("--amp-control", help="amp service control (env MUSHU_AMP_CONTROL)")
    p.add_argument("--markers-data", help="markers service bus (env MUSHU_MARKERS_DATA)")
    p.add_argument("--markers-control", help="markers service control (env MUSHU_MARKERS_CONTROL)")
    p.add_argument("--no-markers", action="store_true", help="do not follow the markers service")
    p.add_argument("--stream", help="amp stream name (env MUSHU_STREAM)")
    p.add_argument("--marker-stream", help="marker stream name (env MUSHU_MARKER_STREAM)")
    p.add_argument("--name", help="LSL name of the data outlet (default mushu-<stream>; markers: <name>-markers)")
    p.add_argument("--type", default="EEG", help="LSL type of the data outlet (default EEG)")


def _build(a: argparse.Namespace):
    from .bridge import LSLBridge  # pylsl: an optional dependency
    return LSLBridge(
      setting("MUSHU_AMP_DATA", a.amp_data), setting("MUSHU_AMP_CONTROL", a.amp_control),
      None if a.no_markers else setting("MUSHU_MARKERS_DATA", a.markers_data),
      None if a.no_markers else setting("MUSHU_MARKERS_CONTROL", a.markers_control),
      stream=setting("MUSHU_STREAM", a.stream), marker_stream=setting("MUSHU_MARKER_STREAM", a.marker_stream),
      name=a.name, lsl_type=a.type)


if __name__ == "__main__":
    sys.exit(main())
