"""``mushu view [NAME]``: the live stream (or recording NAME) in the browser; prints the page's URLs.

The viewer runs in the foreground until Ctrl-C (``mushu-viewer`` is the same as a service of its own).
"""

from __future__ import annotations

import importlib.util
import sys

from mushu_core import process

NAME = "view"
HELP = "show the live stream, or a recording, in the browser (prints the page's URLs)"


def add_arguments(p):
    from mushu_viewer import service
    service.add_arguments(p)
    process.add_common_arguments(p)
    p.set_defaults(parser=p)


def run(args) -> int:
    if importlib.util.find_spec("aiohttp") is None:
        print("mushu view: the viewer needs aiohttp, which is not installed here; install the viewer extra: "
              "pip install 'mushu[viewer]'", file=sys.stderr)
        return 2
    from mushu_viewer import service
    process.setup(args.parser, args, "mushu-viewer")
    try:
        viewer = service.build(args)
    except Exception as exc:  # a bad setting, a port in use, a recording that is not there: say it
        print(f"mushu view: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return process.serve(viewer)
