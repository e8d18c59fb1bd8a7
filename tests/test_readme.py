"""The README's first hour, run as written: its commands and Python snippets against real services
(``mushu up`` in a directory of its own), each output compared with the one the README shows.

A snippet's shown output is a ```text block right after it; numbers may differ (sample counts, times),
everything else must match line by line.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import free_port, isolated_env, mushu

README = Path(__file__).parent.parent / "README.md"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block, in order."""
    return re.findall(r"(?ms)^```(\w*)\n(.*?)^```$", text)


def shown_and_run(kind: str) -> list[tuple[str, str | None]]:
    """Each ``kind`` block with the ```text block after it, if any."""
    found = blocks(README.read_text())
    out = []
    for i, (lang, body) in enumerate(found):
        if lang == kind:
            after = found[i + 1] if i + 1 < len(found) and found[i + 1][0] == "text" else None
            out.append((body, after[1] if after else None))
    return out


def same_but_numbers(shown: str, got: str):
    """``got`` is ``shown`` with other numbers (and at least as many lines where ``...`` stands)."""
    shown_lines, got_lines = shown.rstrip("\n").splitlines(), got.rstrip("\n").splitlines()
    assert len(shown_lines) == len(got_lines), (shown, got)
    for want, line in zip(shown_lines, got_lines):
        pattern = "".join(NUMBER.pattern if NUMBER.fullmatch(part) else re.escape(part)
                          for part in re.split(f"({NUMBER.pattern})", want))
        assert re.fullmatch(pattern, line), f"README shows {want!r}, the code printed {line!r}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``mushu up`` in a directory of its own, with the README's defaults but for free ports."""
    root = tmp_path_factory.mktemp("readme")
    env = isolated_env(root)
    del env["MUSHU_DATA_DIR"]  # recordings in ./data, as the README says
    up = mushu("up", env=env, cwd=root)
    yield root, env, up
    mushu("down", env=env, cwd=root, check=False)


def run_python(code: str, root: Path, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_quickstart_and_recording_snippets_print_what_the_readme_shows(lab):
    root, env, up = lab
    snippets = shown_and_run("python")
    assert len(snippets) >= 3, "the README lost its quickstart, recording or MNE snippet"
    quickstart, recording, with_mne = snippets[:3]
    for code, shown in (quickstart, recording):
        assert shown is not None, f"no output shown after:\n{code}"
        same_but_numbers(shown, run_python(code, root, env))
    run_python(with_mne[0], root, env)  # mne opens the recording as it is
    assert (root / "data" / "session-01.vhdr").exists()


def test_the_shell_commands_run_and_print_what_the_readme_shows(lab):
    root, env, up = lab
    commands = [line for body, _ in shown_and_run("sh") for line in body.splitlines()
                if line.startswith("mushu ") and " up" not in line and "down" not in line
                and not line.startswith("mushu view")]  # serves until Ctrl-C: below
    assert any(c.startswith("mushu convert") for c in commands) and any(c.startswith("mushu plot") for c in commands)
    for command in commands:
        args = command.split("#")[0].split()[1:]
        mushu(*args, env=env, cwd=root, timeout=120)
    assert (root / "session-01.png").exists() and (root / "data" / "session-01.edf").exists()


def test_mushu_view_prints_what_the_readme_shows(lab):
    root, env, up = lab
    shown = [out for body, out in shown_and_run("sh") if body.strip() == "mushu view"]
    assert shown and shown[0] is not None, "the README shows no output of mushu view"
    proc = subprocess.Popen([sys.executable, "-m", "mushu_cli", "view"], env={**env, "MUSHU_VIEWER_PORT": str(free_port())},
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        printed = proc.stdout.readline() + proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(10)

    def shape(text):
        return re.sub(r"127\.0\.0\.1:\d+/\?token=[\w-]+", "127.0.0.1:PORT/?token=TOKEN", text).strip()
    assert shape(printed) == shape(shown[0]), printed


def test_mushu_up_prints_what_the_readme_shows(lab):
    root, env, up = lab
    shown = [out for body, out in shown_and_run("sh") if body.strip() == "mushu up"]
    assert shown and shown[0] is not None, "the README shows no output of mushu up"
    text = up.stdout.replace(str(root), "/home/lab/experiment")
    for variable in ("MUSHU_AMP_CONTROL", "MUSHU_MARKERS_CONTROL", "MUSHU_RECORDER_CONTROL"):
        text = text.replace(env[variable], "tcp://127.0.0.1:" + {"MUSHU_AMP_CONTROL": "12346",
                                                                 "MUSHU_MARKERS_CONTROL": "12348",
                                                                 "MUSHU_RECORDER_CONTROL": "12350"}[variable])
    text = re.sub(r"logs in \S+;", "logs in /run/user/1000/mushu;", text)
    same_but_numbers(shown[0], text)
