"""Every setting of mushu: its environment variable, its key in the configuration file, its default.

A setting is looked up in this order, the first that has it wins:

1. an explicit value (a command-line argument, a function argument);
2. its environment variable (``MUSHU_...``; an empty one counts as unset);
3. the configuration file (TOML: ``$MUSHU_CONFIG``, else ``./mushu.toml`` if
   present; see :mod:`mushu_core.configfile`);
4. its default. Everything defaults to localhost, so that zero configuration
   works on one machine.

Every service, the client, ``mushu up`` (supervisord) and docker-compose read
settings this way. The file key of ``MUSHU_<SECTION>_<KEY>`` is ``key`` in
``[section]`` (``MUSHU_AMP_HISTORY_MB`` is ``history_mb`` in ``[amp]``); the
few older names that do not follow this pattern are in :data:`ALIASES`.

Bind and connect endpoints: a service *binds* its sockets to the
``..._BIND`` variables and everything else *connects* to the variables
without ``_BIND``. A ``..._BIND`` variable defaults to the value of its
connect variable, which is right on one machine; in a container or on a lab
network the service binds e.g. ``tcp://0.0.0.0:12345`` while its clients
connect to ``tcp://amp-host:12345``.
"""

from __future__ import annotations

import os

from mushu_core import configfile
from mushu_core.configfile import ConfigError

#: variable -> default. ``None``: a bind variable, whose default is the value
#: of the variable without ``_BIND``.
DEFAULTS = {
    "MUSHU_AMP_DATA": "tcp://127.0.0.1:12345",
    "MUSHU_AMP_DATA_BIND": None,
    "MUSHU_AMP_CONTROL": "tcp://127.0.0.1:12346",
    "MUSHU_AMP_CONTROL_BIND": None,
    "MUSHU_STREAM": "eeg",
    # amp service tuning (its command-line defaults)
    "MUSHU_AMP_HISTORY_MB": "64",
    "MUSHU_AMP_SNDHWM": "10000",
    # and at most this many MiB of blocks per subscriber (large blocks: fewer messages)
    "MUSHU_AMP_QUEUE_MB": "256",
    "MUSHU_AMP_BLOCK_MS": "1",
    # the amp also publishes on a local IPC endpoint, which clients on its
    # host and network namespace use instead of TCP (0: TCP only)
    "MUSHU_AMP_LOCAL_IPC": "1",
    # where the amp keeps its driver, configuration and running state, to
    # restore them after a restart (empty: not kept; `mushu up` sets one)
    "MUSHU_AMP_STATE": "",
    "MUSHU_DRIVERS": "",
    # `mushu up` also runs mushu-lsl-bridge for the stream: it as LSL outlets (the lsl extra)
    "MUSHU_AMP_LSL": "0",
    # markers service: bus endpoints, its ZeroMQ ingress, and the TCP/UDP
    # ingress (libmushu's port 12344, on loopback unless configured).
    "MUSHU_MARKERS_DATA": "tcp://127.0.0.1:12347",
    "MUSHU_MARKERS_DATA_BIND": None,
    "MUSHU_MARKERS_CONTROL": "tcp://127.0.0.1:12348",
    "MUSHU_MARKERS_CONTROL_BIND": None,
    "MUSHU_MARKERS_INGRESS": "tcp://127.0.0.1:12349",
    "MUSHU_MARKERS_INGRESS_BIND": None,
    "MUSHU_MARKERS_HOST": "127.0.0.1",
    "MUSHU_MARKERS_HOST_BIND": None,
    "MUSHU_MARKERS_PORT": "12344",
    "MUSHU_MARKER_STREAM": "markers",
    "MUSHU_MARKERS_HISTORY_MARKERS": "100000",
    "MUSHU_MARKERS_HISTORY_MB": "32",
    # where the markers service writes every marker before it is published, to go on
    # in the same session after a restart (empty: no journal; `mushu up` sets one)
    "MUSHU_MARKERS_JOURNAL": "",
    "MUSHU_MARKERS_SNDHWM": "100000",
    # and at most this many MiB of markers per subscriber (a 4 KiB label each, at worst)
    "MUSHU_MARKERS_QUEUE_MB": "64",
    "MUSHU_MARKERS_MAX_CONNECTIONS": "256",
    # marker port hardening: allowed senders (empty: everyone), limits per
    # sender address, and the senders without a rate limit (this host)
    "MUSHU_MARKERS_ALLOW": "",
    "MUSHU_MARKERS_MAX_CONNECTIONS_PER_SENDER": "64",
    "MUSHU_MARKERS_MAX_LABEL_BYTES": "4096",
    "MUSHU_MARKERS_RATE": "1000",
    "MUSHU_MARKERS_BURST": "1000",
    "MUSHU_MARKERS_RATE_EXEMPT": "127.0.0.0/8,::1",
    "MUSHU_MARKERS_IDLE_TIMEOUT": "300",
    # recorder: its control socket, and where relative recording names go
    # (on the recorder's host).
    "MUSHU_RECORDER_CONTROL": "tcp://127.0.0.1:12350",
    "MUSHU_RECORDER_CONTROL_BIND": None,
    "MUSHU_DATA_DIR": "data",
    # blocks the recorder queues from the amp, at most, in MiB (then it refetches from the history)
    "MUSHU_RECORDER_QUEUE_MB": "256",
    # viewer: where its page is served (loopback; beyond it only with a token), and its tokens' file
    "MUSHU_VIEWER_HOST": "127.0.0.1",
    "MUSHU_VIEWER_PORT": "12360",
    "MUSHU_VIEWER_TOKENS": "",
    # `mushu up` also runs the viewer (the viewer extra)
    "MUSHU_VIEWER_UP": "0",
    # mushu up/down/status: the supervisord run directory (empty:
    # $XDG_RUNTIME_DIR/mushu, else mushu-<uid> in the temporary directory),
    # and the services' log level.
    "MUSHU_RUN_DIR": "",
    "MUSHU_LOG_LEVEL": "INFO",
    # CURVE encryption and client keys (docs/security.md): the key directory
    # ('mushu keys init DIR' for the services, DIR/clients/NAME for a
    # client). Empty: off.
    "MUSHU_KEYS": "",
}

#: What each setting does, for docs/configuration.md (``python -m mushu_cli.configdoc``), in the
#: order the table lists them.
HELP = {
    "MUSHU_AMP_DATA": "amp service blocks (PUB)",
    "MUSHU_AMP_DATA_BIND": "where the amp service binds them",
    "MUSHU_AMP_CONTROL": "amp service control (ROUTER)",
    "MUSHU_AMP_CONTROL_BIND": "where the amp service binds it",
    "MUSHU_STREAM": "name of the amp's stream",
    "MUSHU_AMP_HISTORY_MB": "block history for consumers that fall behind or join late, MiB",
    "MUSHU_AMP_SNDHWM": "publisher high-water mark per subscriber, messages, at most",
    "MUSHU_AMP_QUEUE_MB": (
        "and at most this many MiB of blocks queued per subscriber: the mark is this budget in 128 KiB blocks"
        " (the largest), if lower: 2048"),
    "MUSHU_AMP_BLOCK_MS": "block period of the simulated drivers, ms",
    "MUSHU_AMP_LOCAL_IPC": (
        "the amp also publishes on a local IPC endpoint, which clients on its host and network namespace read"
        " instead of TCP; `0`: TCP only (set in a client: it reads over TCP)"),
    "MUSHU_AMP_STATE": (
        "file where the amp keeps its driver, configuration and running state; a restarted amp restores them"),
    "MUSHU_DRIVERS": "extra drivers, `name=module:Class,...`",
    "MUSHU_AMP_LSL": (
        "`1`: `mushu up` also runs `mushu-lsl-bridge` for this stream (program `lslbridge`, `lslbridge-NAME` for "
        "`[amp.NAME]`), which publishes it and the markers as LSL outlets; needs the `lsl` extra"),
    "MUSHU_MARKERS_DATA": "markers (PUB)",
    "MUSHU_MARKERS_DATA_BIND": "where the markers service binds them",
    "MUSHU_MARKERS_CONTROL": "markers service control (ROUTER)",
    "MUSHU_MARKERS_CONTROL_BIND": "where it binds it",
    "MUSHU_MARKERS_INGRESS": "ZeroMQ marker ingress (PULL)",
    "MUSHU_MARKERS_INGRESS_BIND": "where it binds it",
    "MUSHU_MARKERS_HOST": "host stimulus programs send TCP/UDP markers to",
    "MUSHU_MARKERS_HOST_BIND": "interface the markers service listens on",
    "MUSHU_MARKERS_PORT": "TCP and UDP marker port (libmushu's)",
    "MUSHU_MARKER_STREAM": "name of the marker stream",
    "MUSHU_MARKERS_HISTORY_MARKERS": "markers kept for late consumers",
    "MUSHU_MARKERS_HISTORY_MB": "at most this much marker history, MiB",
    "MUSHU_MARKERS_JOURNAL": (
        "file where the markers service writes every marker before publishing it; a restarted service resumes"
        " the same marker session and history, so no consumer loses a marker unseen"),
    "MUSHU_MARKERS_SNDHWM": "publisher high-water mark, messages",
    "MUSHU_MARKERS_QUEUE_MB": (
        "and at most this many MiB of markers queued per subscriber (4 KiB labels: a lower mark)"),
    "MUSHU_MARKERS_MAX_CONNECTIONS": "open TCP marker connections at most",
    "MUSHU_MARKERS_MAX_CONNECTIONS_PER_SENDER": "open TCP marker connections from one address at most",
    "MUSHU_MARKERS_ALLOW": "TCP/UDP marker senders allowed: comma-separated addresses or CIDR networks, IPv4 or IPv6",
    "MUSHU_MARKERS_MAX_LABEL_BYTES": "longest marker label in UTF-8 bytes (and at most 1024 characters)",
    "MUSHU_MARKERS_RATE": "markers per second per TCP/UDP sender address (0: no limit)",
    "MUSHU_MARKERS_BURST": "markers a sender may send at once above the rate",
    "MUSHU_MARKERS_RATE_EXEMPT": "senders without a rate limit (`none`: nobody)",
    "MUSHU_MARKERS_IDLE_TIMEOUT": "seconds before a silent TCP connection is closed",
    "MUSHU_RECORDER_CONTROL": "recorder control (ROUTER)",
    "MUSHU_RECORDER_CONTROL_BIND": "where the recorder binds it",
    "MUSHU_DATA_DIR": "where relative recording names go, on the recorder's computer",
    "MUSHU_RECORDER_QUEUE_MB": (
        "blocks the recorder queues from the amp, at most, MiB (past it, it refetches from the history)"),
    "MUSHU_VIEWER_HOST": "where `mushu view` serves its page (beyond loopback only with a token: [viewer.md](viewer.md))",
    "MUSHU_VIEWER_PORT": "the page's port",
    "MUSHU_VIEWER_TOKENS": "a file of the viewer's and the controller's tokens, kept across runs (empty: new each run)",
    "MUSHU_VIEWER_UP": "1: `mushu up` also runs the viewer (the viewer extra)",
    "MUSHU_RUN_DIR": ("the run directory: `mushu up`'s supervisord files and logs, and every service's start marker "
                      "(an unclean exit is reported at the next start)"),
    "MUSHU_LOG_LEVEL": "the services' log level",
    "MUSHU_KEYS": (
        "CURVE key directory: for a service the one `mushu keys init` made, for a client its `clients/NAME` "
        "([security.md](security.md))"),
}

#: How the table shows a default that is not a plain value.
DEFAULT_TEXT = {
    "MUSHU_CONFIG": "`./mushu.toml`",
    "MUSHU_AMP_STATE": "(none; `mushu up`: in the run directory)",
    "MUSHU_MARKERS_JOURNAL": "(none; `mushu up`: in the run directory)",
    "MUSHU_MARKERS_ALLOW": "empty: everyone",
    "MUSHU_VIEWER_TOKENS": "(none: new tokens each run; `mushu up`: in the run directory)",
    "MUSHU_RUN_DIR": "`$XDG_RUNTIME_DIR/mushu`, else `mushu-<uid>` in the temporary directory",
    "MUSHU_KEYS": "(none: CURVE off)",
}


#: Sections of the configuration file.
SECTIONS = ("amp", "markers", "recorder", "viewer", "run", "security")

#: Variables whose file key does not follow ``MUSHU_<SECTION>_<KEY>``.
ALIASES = {
    "MUSHU_STREAM": ("amp", "stream"),
    "MUSHU_DRIVERS": ("amp", "drivers"),
    "MUSHU_MARKER_STREAM": ("markers", "stream"),
    "MUSHU_DATA_DIR": ("recorder", "data_dir"),
    "MUSHU_LOG_LEVEL": ("run", "log_level"),
    "MUSHU_KEYS": ("security", "keys"),
}

BIND_SUFFIX = "_BIND"


def file_key(name: str) -> tuple[str, str] | None:
    """The ``(section, key)`` of variable ``name`` in the configuration file, or None."""
    if name in ALIASES:
        return ALIASES[name]
    section, _, key = name.removeprefix("MUSHU_").partition("_")
    if section.lower() in SECTIONS and key:
        return section.lower(), key.lower()
    return None


def _file_variables() -> dict[tuple[str, str], str]:
    keys = {}
    for name in DEFAULTS:
        key = file_key(name)
        if key is not None:
            keys[key] = name
    return keys


#: Keys only a further amp service's table ``[amp.NAME]`` has: the control endpoint of the recorder of
#: its stream (a recorder service of its own, which ``mushu up`` runs as ``recorder-NAME``).
STREAM_ONLY_KEYS = {"recorder": "MUSHU_RECORDER_CONTROL", "recorder_bind": "MUSHU_RECORDER_CONTROL_BIND"}
#: The keys of ``[amp]`` that a further amp service's own table ``[amp.NAME]`` may set (its stream is NAME).
STREAM_KEYS = frozenset({*(k for s, k in _file_variables() if s == "amp" and k != "stream"), *STREAM_ONLY_KEYS})


def _file_values(path: str) -> dict[tuple[str, str], str]:
    return configfile.read(path, set(_file_variables()), STREAM_KEYS)


def amp_streams() -> list[str]:
    """The streams of the further amp services the configuration file declares (``[amp.NAME]``), in its order."""
    path = configfile.config_path()
    if path is None:
        return []
    names = [section[4:] for section, _ in _file_values(path) if section.startswith("amp.")]
    return list(dict.fromkeys(names))


def amp_stream_settings(stream: str) -> dict[str, str]:
    """The settings of stream ``stream``'s amp service, from its ``[amp.NAME]`` table: variable -> value.

    ``data`` and ``control`` must be its own; a bind endpoint not given is its
    connect endpoint; ``MUSHU_STREAM`` is the name. Keys it does not give are
    the first amp's (``[amp]``, the environment, the defaults). ``recorder``
    (``MUSHU_RECORDER_CONTROL``) is the control endpoint of the stream's own
    recorder, where it has one.

    Raises
    ------
    ConfigError
        If the file declares no such stream or the table lacks ``data`` or ``control``.
    """
    path = configfile.config_path()
    section = f"amp.{stream}"
    values = _file_values(path) if path else {}
    variables = {key: name for (s, key), name in _file_variables().items() if s == "amp"} | STREAM_ONLY_KEYS
    own = {variables[key]: value for (s, key), value in values.items() if s == section}
    if not own:
        raise ConfigError(f"no amp stream {stream!r}: the configuration file {path} has no [amp.{stream}]")
    missing = [k for k in ("data", "control") if variables[k] not in own]
    if missing:
        raise ConfigError(f"{path}: [amp.{stream}] needs endpoints of its own: {' and '.join(missing)} "
                          f"(e.g. data = \"tcp://127.0.0.1:12355\", control = \"tcp://127.0.0.1:12356\")")
    own["MUSHU_STREAM"] = stream
    for bind in ("MUSHU_AMP_DATA_BIND", "MUSHU_AMP_CONTROL_BIND", "MUSHU_RECORDER_CONTROL_BIND"):
        if bind[:-len(BIND_SUFFIX)] in own:
            own.setdefault(bind, own[bind[:-len(BIND_SUFFIX)]])
    return own


#: Set by ``mushu up`` for the services it starts: ``PATH|NAME,NAME,...``, the settings whose
#: variables it set from the configuration file PATH, so that a message names the file, not "environment".
FROM_FILE_VARIABLE = "MUSHU_SETTINGS_FROM_FILE"


def _passed_on(name: str) -> str | None:
    """Where ``mushu up`` found setting ``name``, if it passed it on from its configuration file."""
    path, _, names = os.environ.get(FROM_FILE_VARIABLE, "").rpartition("|")
    key = file_key(name)
    if path and key and name in names.split(","):
        return f"{path} [{key[0]}] {key[1]}, passed on by mushu up"
    return None


def _lookup(name: str, value) -> tuple[object, str]:
    """``(value, where it came from)`` for setting ``name``."""
    if value is not None:
        return value, "argument"
    env = os.environ.get(name)
    if env:
        return env, _passed_on(name) or "environment"
    default = DEFAULTS[name]  # KeyError: a name mushu does not know
    path = configfile.config_path()
    if path is not None:
        key = file_key(name)
        found = _file_values(path).get(key) if key else None
        if found:
            return found, f"{path} [{key[0]}] {key[1]}"
    if default is None and name.endswith(BIND_SUFFIX):
        return _lookup(name[:-len(BIND_SUFFIX)], None)
    return default, "default"


def setting(name: str, value: str | None = None) -> str:
    """Return ``value`` if given, else the environment variable ``name``, else the file's value, else its default.

    Raises
    ------
    KeyError
        If mushu knows no setting ``name``.
    ConfigError
        If the configuration file cannot be read or has unknown keys.
    """
    return _lookup(name, value)[0]


def source(name: str, value: str | None = None) -> str:
    """Where :func:`setting` finds ``name``: ``argument``, ``environment``, the file and key, or ``default``."""
    return _lookup(name, value)[1]


def setting_int(name: str, value: int | str | None = None) -> int:
    """:func:`setting` as an integer; a value that is none raises ValueError naming its source."""
    return _convert(name, value, int, "an integer")


def setting_float(name: str, value: float | str | None = None) -> float:
    """:func:`setting` as a number; a value that is none raises ValueError naming its source."""
    return _convert(name, value, float, "a number")


def setting_mib(name: str, value: float | str | None = None) -> int:
    """:func:`setting` as a size in MiB, returned in bytes; a value that is no number raises ValueError."""
    return int(setting_float(name, value) * 2**20)


def setting_flag(name: str, value: bool | str | None = None) -> bool:
    """:func:`setting` as a yes/no (1/0, true/false, yes/no, on/off); anything else raises ValueError."""
    if isinstance(value, bool):
        return value
    return _convert(name, value, _flag, "1/0, true/false, yes/no or on/off")


def _flag(raw: str) -> bool:
    word = str(raw).strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(word)


def _convert(name, value, kind, what):
    raw, where = _lookup(name, value)
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={raw!r} (from {where}) is not {what}; correct it there") from None


def resolved() -> dict[str, str]:
    """Every setting's value as :func:`setting` finds it now (bind variables resolved)."""
    return {name: setting(name) for name in DEFAULTS}


def from_file() -> str | None:
    """:data:`FROM_FILE_VARIABLE`'s value for the settings the configuration file gives now, or None."""
    path = configfile.config_path()
    names = [name for name in DEFAULTS if source(name).startswith(f"{path} [")] if path else []
    return f"{os.path.abspath(path)}|{','.join(names)}" if names else None


__all__ = ["DEFAULTS", "SECTIONS", "ALIASES", "ConfigError", "file_key", "setting", "setting_int",
           "setting_float", "source", "resolved", "amp_streams", "amp_stream_settings"]
