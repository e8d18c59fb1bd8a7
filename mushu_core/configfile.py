"""The configuration file: finding it, reading it, checking its keys.

The file is TOML with one table per part of mushu (``[amp]``, ``[markers]``,
``[recorder]``, ``[run]``, ``[security]``), and one ``[amp.NAME]`` per further amp
service (stream ``NAME``); :mod:`mushu_core.config` says which key is which
environment variable. Values may be strings or numbers; they are
handed on as strings, exactly as an environment variable would be, and the
code that uses a setting converts and checks it.

``tomllib`` (Python 3.11+) or ``tomli`` is imported only when a file is
actually read, so the client imports nothing beyond pyzmq, msgpack and numpy.
"""

from __future__ import annotations

import os
import re

#: The environment variable that names the file.
ENV = "MUSHU_CONFIG"
#: The file looked for in the working directory when ``MUSHU_CONFIG`` is not set.
LOCAL_NAME = "mushu.toml"

_cache: dict[str, tuple[tuple[int, int], dict[tuple[str, str], str]]] = {}


class ConfigError(ValueError):
    """The configuration file cannot be read or holds something mushu does not know."""


def config_path() -> str | None:
    """The file in force: ``$MUSHU_CONFIG``, else ``./mushu.toml`` if present, else None.

    Raises
    ------
    ConfigError
        If ``MUSHU_CONFIG`` names a file that does not exist.
    """
    path = os.environ.get(ENV)
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"{ENV}={path!r} names no file")
        return os.path.abspath(path)
    if os.path.isfile(LOCAL_NAME):
        return os.path.abspath(LOCAL_NAME)
    return None


#: Sections that may hold a table per stream, ``[amp.NAME]``: another service of that kind.
STREAM_SECTIONS = ("amp",)
#: What a stream's name may be (it names a supervisord program, a log file and an environment).
_STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")


def read(path: str, known: set[tuple[str, str]],
         stream_keys: frozenset = frozenset()) -> dict[tuple[str, str], str]:
    """The ``(section, key) -> value`` pairs of the file at ``path``, values as strings.

    The result is cached until the file changes (size or modification time).

    Parameters
    ----------
    path : str
        The TOML file.
    known : set of (str, str)
        The ``(section, key)`` pairs mushu knows; anything else is an error,
        so that a misspelt key does not go unnoticed.
    stream_keys : frozenset of str
        The keys a table ``[amp.NAME]`` may hold (:data:`STREAM_SECTIONS`);
        its pairs come back as ``("amp.NAME", key)``, in the file's order.

    Raises
    ------
    ConfigError
        If the file is not valid TOML, has an unknown section or key, or a
        value that is neither a string nor a number.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc}") from None
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _cache.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    values = _parse(path, known, stream_keys)
    _cache[path] = (stamp, values)
    return values


def _parse(path: str, known: set[tuple[str, str]], stream_keys: frozenset) -> dict[tuple[str, str], str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    sections = sorted({s for s, _ in known})
    values = {}
    for section, table in doc.items():
        if section not in sections or not isinstance(table, dict):
            raise ConfigError(f"{path}: unknown section {section!r}; mushu knows [{'], ['.join(sections)}]")
        own = {k: v for k, v in table.items() if not (section in STREAM_SECTIONS and isinstance(v, dict))}
        keys = {k for s, k in known if s == section}
        values.update(((section, k), v) for k, v in _table(path, section, own, keys).items())
        for name, sub in table.items():
            if name not in own:  # [amp.NAME]: a further service of that kind
                if not _STREAM_NAME.fullmatch(name):
                    raise ConfigError(f"{path}: [{section}.{name}]: a stream's name is 1 to 32 letters, digits, "
                                      "'-' or '_', beginning with a letter or digit")
                values.update(((f"{section}.{name}", k), v)
                              for k, v in _table(path, f"{section}.{name}", sub, stream_keys).items())
    return values


def _table(path: str, title: str, table: dict, keys) -> dict[str, str]:
    """The keys and values of table ``[title]``, checked against ``keys``; values as strings."""
    values = {}
    for key, value in table.items():
        if key not in keys:
            raise ConfigError(f"{path}: unknown key {key!r} in [{title}]; known keys: {', '.join(sorted(keys))}")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{path}: [{title}] {key} must be a string or a number, not {type(value).__name__}")
        values[key] = value if isinstance(value, str) else str(value)
    return values
