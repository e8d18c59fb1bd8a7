"""The settings table of docs/configuration.md, made from the settings registry (``mushu_core.config``).

``python -m mushu_cli.configdoc`` prints it; ``--write FILE`` puts it into ``FILE`` between the two
marker lines, so the page cannot drift from the registry (``tests/test_orchestration.py`` checks it).
"""

from __future__ import annotations

import argparse
import sys

from mushu_core import config

BEGIN = "<!-- settings table: made by `python -m mushu_cli.configdoc --write docs/configuration.md` -->"
END = "<!-- end of the settings table -->"


def default_text(name: str) -> str:
    """The default as the table shows it."""
    if name in config.DEFAULT_TEXT:
        return config.DEFAULT_TEXT[name]
    value = config.DEFAULTS.get(name)
    if value is None and name.endswith("_BIND"):
        return f"`{name.removesuffix('_BIND')}`"  # binds where its clients connect
    return "" if value in (None, "") else f"`{value}`"


def table() -> str:
    """Every setting: variable, configuration file key, default and what it does."""
    missing = sorted(set(config.DEFAULTS) - set(config.HELP))
    if missing:
        raise KeyError(f"settings without a description in mushu_core.config.HELP: {', '.join(missing)}")
    rows = ["| variable | `mushu.toml` | default | what |", "| --- | --- | --- | --- |"]
    for name, help_text in config.HELP.items():
        key = config.file_key(name)
        rows.append(f"| `{name}` | {f'`[{key[0]}] {key[1]}`' if key else ''} | {default_text(name)} | {help_text} |")
    return "\n".join(rows) + "\n"


def replace_table(text: str) -> str:
    """``text`` with the part between the marker lines replaced by :func:`table`."""
    try:
        head, rest = text.split(BEGIN + "\n", 1)
        _old, tail = rest.split(END, 1)
    except ValueError:
        raise ValueError(f"the page has no settings table between {BEGIN!r} and {END!r}") from None
    return f"{head}{BEGIN}\n{table()}{END}{tail}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mushu_cli.configdoc", description=__doc__.splitlines()[0])
    p.add_argument("--write", metavar="FILE", help="replace the table in FILE (docs/configuration.md)")
    a = p.parse_args(argv)
    if a.write is None:
        sys.stdout.write(table())
        return 0
    with open(a.write, encoding="utf-8") as f:
        text = f.read()
    with open(a.write, "w", encoding="utf-8") as f:
        f.write(replace_table(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
