"""``mushu record status`` and ``mushu record stop [NAME]``: the recording in progress, on the recorder.

A recording whose client is gone (or that has no lease) can be seen and
ended here by any controller; a viewer may look, not stop (docs/security.md).
"""

from __future__ import annotations

import argparse
import json
import sys

from mushu_core.config import ConfigError, amp_stream_settings, setting
from mushu_core.control import ControlClient
from mushu_core.errors import Forbidden, MushuError
from mushu_core.leases import describe_client

NAME = "record"
HELP = "show or end the recording in progress on the recorder"


def add_arguments(p):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--recorder", help="the recorder's control endpoint (env MUSHU_RECORDER_CONTROL)")
    common.add_argument("--stream", help="the recorder of this stream, declared as [amp.NAME] recorder in mushu.toml")
    common.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for the recorder (default %(default)g)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", parents=[common],
                                help="the recording in progress and the last one that ended")
    status.add_argument("--json", action="store_true", help="print the recorder's status as JSON")
    stop = actions.add_parser("stop", parents=[common], help="end the recording in progress now, at the "
                              "last sample it has (a controller's right)")
    stop.add_argument("name", nargs="?", help="end it only if it is this recording (a name as given to "
                      "start(), relative to the recorder's data directory, or its path)")


def run(args) -> int:
    try:
        endpoint = args.recorder or (_stream_recorder(args.stream) if args.stream else
                                     setting("MUSHU_RECORDER_CONTROL"))
        ctl = ControlClient(endpoint, args.timeout, "recorder")
    except ConfigError as exc:
        print(f"mushu record: {exc}", file=sys.stderr)
        return 2
    try:
        if args.action == "status":
            status = ctl.call("status")
            print(json.dumps(status, indent=2) if args.json else render(status))
            return 0
        result = ctl.call("stop", **({} if args.name is None else {"name": args.name}))
    except Forbidden as exc:
        print(f"mushu record {args.action}: {exc}; only a controller may (MUSHU_KEYS: a controller's key folder)",
              file=sys.stderr)
        return 1
    except (MushuError, ValueError, RuntimeError, TypeError) as exc:
        print(f"mushu record {args.action}: {exc}", file=sys.stderr)
        return 1
    finally:
        ctl.close()
    print(f"mushu record stop: finished {result['base']}: {result['n_samples']} samples, "
          f"{result['markers']} markers, {len(result['gaps'])} gaps")
    return 0


def _stream_recorder(stream: str) -> str:
    own = amp_stream_settings(stream)
    if "MUSHU_RECORDER_CONTROL" not in own:
        raise ConfigError(f"stream {stream!r} has no recorder of its own ([amp.{stream}] recorder)")
    return own["MUSHU_RECORDER_CONTROL"]


def render(status: dict) -> str:
    """The recorder's status as text: the recording in progress and how to end it, the last one that ended."""
    rec = status.get("recording")
    lines = []
    if rec is None:
        lines.append(f"no recording in progress (data in {status['data_dir']})")
    else:
        lease = ("no lease: it runs until it is stopped" if rec.get("lease_s") is None else
                 f"lease {rec['lease_s']:g} s, renewed {rec['renewed_s_ago']:.1f} s ago")
        lines += [f"recording {rec['base']}: {rec['n_samples']} samples ({rec['n_samples'] / rec['fs']:.1f} s), "
                  f"{rec['markers']} markers, {len(rec['gaps'])} gaps"
                  + (f"; error: {rec['error']}" if rec["error"] else ""),
                  f"  started by {describe_client(rec.get('client'))}; {lease}",
                  f"  end it: mushu record stop {rec['name']}"]
    last = status.get("last_finished")
    if last:
        lines.append(f"last ended: {last['base']}: {last['n_samples']} samples, {last['end_reason']}"
                     + (f"; error: {last['error']}" if last.get("error") else ""))
    return "\n".join(lines)
