"""The packages' layers: the client library stays light, the shared core knows nothing above it."""

import json
import subprocess
import sys

#: What a stimulus PC or an analysis script must not pay for when it imports the client.
HEAVY = ("mushu_amp", "mushu_markers", "mushu_recorder", "mushu_lslbridge", "mushu_viewer", "mushu_cli", "mne",
         "edfio", "matplotlib", "scipy", "supervisor", "pylsl", "usb", "tqdm", "aiohttp")


def _modules_after(statement: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", f"{statement}; import sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_importing_the_client_loads_no_service_cli_or_file_library():
    loaded = _modules_after("import mushu_client")
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert not heavy, f"import mushu_client loads {heavy}"
    assert "zmq" in loaded and "numpy" in loaded and "mushu_core.wire" in loaded  # what it does need


def test_the_shared_core_imports_nothing_above_it():
    loaded = _modules_after("import importlib, pkgutil, mushu_core; "
                            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(mushu_core.__path__, 'mushu_core.')]")
    above = [m for m in loaded if m.split(".")[0] in ("mushu_client",) + HEAVY]
    assert not above, f"mushu_core loads {above}"
