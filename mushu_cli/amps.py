"""``mushu amps``: the drivers and whether each is available."""

from __future__ import annotations

import json
import sys

from mushu_core.config import ConfigError, amp_stream_settings, setting
from mushu_core.control import ControlClient
from mushu_core.errors import ServiceUnavailable

NAME = "amps"
HELP = "list the amplifier drivers and whether each is available"


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print a JSON list for scripts")
    p.add_argument("--control", help="amp service control endpoint (env MUSHU_AMP_CONTROL)")
    p.add_argument("--stream", help="the amp service of this stream, declared as [amp.NAME] in mushu.toml")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for the service")


def run(args) -> int:
    try:
        endpoint = args.control or (amp_stream_settings(args.stream)["MUSHU_AMP_CONTROL"] if args.stream else
                                    setting("MUSHU_AMP_CONTROL"))
    except ConfigError as exc:
        print(f"mushu amps: {exc}", file=sys.stderr)
        return 2
    ctl = ControlClient(endpoint, args.timeout, "amp")
    try:
        amps, source = ctl.call("amps"), f"the amp service at {endpoint}"
    except ServiceUnavailable:
        amps, source = _local_amps(), None
    finally:
        ctl.close()
    if args.json:
        print(json.dumps([{**a, "source": "service" if source else "local"} for a in amps]))
        return 0
    if source:
        print(f"Amplifiers as {source} sees them:")
    else:
        print(f"No amp service answers at {endpoint}; the drivers installed on this computer:")
    width = max((len(a["name"]) for a in amps), default=4)
    for a in amps:
        state = "available" if a["available"] else ("not installed" if not a["installed"] else "not available")
        reason = f"  ({a['reason']})" if a.get("reason") else ""
        print(f"  {a['name']:<{width}}  {state}{reason}")
    return 0


def _local_amps():
    try:
        from mushu_amp.drivers import describe_amps
    except ImportError:  # a client-only install
        return []
    return describe_amps()
