"""The driver registry.

Each supported driver lives in its own module of this package. A driver whose
import fails (a missing optional dependency such as pyusb or pylsl) is skipped
and logged; so is one whose ``is_available()`` raises. Extra drivers from
other packages are named in the environment variable ``MUSHU_DRIVERS`` as
``name=module:Class`` entries separated by commas.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os

from mushu_core.errors import UnknownAmp

log = logging.getLogger(__name__)

#: Driver name -> "module:Class"; modules are relative to this package.
SUPPORTED_AMPS = {
    "randomamp": ".randomamp:RandomAmp",
    "sinusamp": ".sinusamp:SinusAmp",
    "rampamp": ".rampamp:RampAmp",
    "replayamp": ".replayamp:ReplayAmp",
    "lslamp": ".lslamp:LSLAmp",
    "gusbamp": ".gusbamp:GUSBamp",
    "epoc": ".epoc:Epoc",
}
#: The package extra that brings each driver's dependencies.
EXTRAS = {"lslamp": "lsl", "gusbamp": "usb", "epoc": "usb"}


def _registry() -> dict[str, str]:
    amps = dict(SUPPORTED_AMPS)
    for entry in filter(None, (e.strip() for e in os.environ.get("MUSHU_DRIVERS", "").split(","))):
        name, _, target = entry.partition("=")
        if not name or ":" not in target:
            log.error("MUSHU_DRIVERS entry %r is not name=module:Class; ignored", entry)
            continue
        amps[name.strip()] = target.strip()
    return amps


def load_driver(name: str):
    """Return the driver class registered as ``name``.

    Raises
    ------
    UnknownAmp
        No driver of that name is registered (a KeyError and a ValueError).
    ImportError
        The driver's module (or one of its dependencies) cannot be imported;
        the message names the extra to install.
    """
    registry = _registry()
    target = registry.get(name)
    if target is None:
        close = difflib.get_close_matches(str(name), registry, 1)
        raise UnknownAmp(f"unknown amp {name!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                         f"known amps: {', '.join(sorted(registry))}")
    module, _, cls = target.partition(":")
    try:
        mod = importlib.import_module(module, __name__) if module.startswith(".") else importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or str(exc)
        if name in EXTRAS:
            raise ImportError(f"amp {name!r} needs {missing}, which is not installed: install mushu's "
                              f"{EXTRAS[name]!r} extra (pip install -e \".[{EXTRAS[name]}]\" in mushu's "
                              f"directory)", name=exc.name) from exc
        raise ImportError(f"amp {name!r} ({target}, from MUSHU_DRIVERS) cannot be imported: {exc}",
                          name=exc.name) from exc
    return getattr(mod, cls)


def describe_amps() -> list[dict]:
    """Every registered driver: ``{"name", "installed", "available", "reason"}``.

    ``installed`` is False when the import failed; ``available`` is the
    driver's own ``is_available()``. Failures are logged, never raised.
    """
    out = []
    for name in _registry():
        entry = {"name": name, "installed": False, "available": False, "reason": None}
        try:
            cls = load_driver(name)
            entry["installed"] = True
            entry["available"] = bool(cls.is_available())
        except Exception as exc:  # a broken driver only hides itself
            entry["reason"] = f"{type(exc).__name__}: {exc}"
            log.warning("amp %r skipped: %s", name, entry["reason"])
        out.append(entry)
    return out


def get_available_amps() -> list[str]:
    """Names of the drivers that import and report themselves available."""
    return [a["name"] for a in describe_amps() if a["available"]]
