"""Control requests and replies: the envelope every service's ROUTER and every client's DEALER speak."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

from mushu_core.errors import Forbidden, UnknownAmp

from .codec import PROTOCOL_VERSION, Fields, ProtocolError, check_plain, pack, unpack_map

# control requests and replies (ROUTER/DEALER, REQ-compatible envelope)

#: Exception types a reply may name that the client raises as themselves;
#: anything else becomes a RemoteError. Names are looked up, never evaluated.
BUILTIN_ERRORS = {"ValueError": ValueError, "TypeError": TypeError, "KeyError": KeyError,
                  "RuntimeError": RuntimeError, "NotImplementedError": NotImplementedError,
                  "FileExistsError": FileExistsError, "FileNotFoundError": FileNotFoundError,
                  "PermissionError": PermissionError, "Forbidden": Forbidden, "UnknownAmp": UnknownAmp}

COMMAND = re.compile(r"^[a-z_]{1,32}$")


def encode_request(cmd: str, **args) -> bytes:
    """Encode a control request ``{"version", "cmd", **args}``."""
    return pack({"version": PROTOCOL_VERSION, "cmd": cmd, **args})


def decode_request(frame) -> tuple[str, dict]:
    """Return ``(cmd, args)`` of a control request."""
    m = unpack_map(frame, "control request")
    f = Fields(m, "control request")
    f.version()
    cmd = f.str("cmd", COMMAND)
    check_plain(m, "control request")
    args = {k: v for k, v in m.items() if k not in ("version", "cmd")}
    return cmd, args


def encode_reply(result=None, request_id=None) -> bytes:
    """A successful reply; ``request_id`` echoes the request's ``id`` field."""
    return pack({"version": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result})


def encode_error(exc_type: str, message: str, request_id=None) -> bytes:
    """A failed reply naming the exception type and its message."""
    return pack({"version": PROTOCOL_VERSION, "id": request_id, "ok": False,
                 "error": {"type": exc_type, "message": message}})


def dispatch(commands: dict, cmd: str, args: dict):
    """Call ``commands[cmd](**args)``, refusing unknown commands and arguments by name."""
    fn = commands.get(cmd)
    if fn is None:
        raise ValueError(f"unknown command {cmd!r}; commands: {', '.join(sorted(commands))}")
    params = inspect.signature(fn).parameters
    unknown = [k for k in args if k not in params]
    if unknown:
        raise TypeError(f"command {cmd!r} takes no argument {', '.join(map(repr, unknown))}")
    missing = [p.name for p in params.values()
               if p.default is inspect.Parameter.empty and p.name not in args]
    if missing:
        raise TypeError(f"command {cmd!r} needs argument {', '.join(map(repr, missing))}")
    return fn(**args)


class ReplyFrames:
    """A control result followed by extra reply frames (e.g. history blocks)."""

    __slots__ = ("result", "frames")

    def __init__(self, result, frames: list):
        self.result = result
        self.frames = frames


def serve_request(frames: list, handle) -> tuple[list, str | None, Exception | None]:
    """Answer one control request received on a ROUTER socket.

    ``frames`` is what the ROUTER received: the envelope (peer identity and
    any routing frames, up to and including the empty delimiter frame) and
    one request frame. ``handle(cmd, args)`` returns the result (or a
    :class:`ReplyFrames`) or raises; the exception's type name and message go
    back to the caller.

    Returns
    -------
    reply : list
        Frames to send on the ROUTER socket (the same envelope, then the reply).
    cmd : str or None
        The command, None if the request was malformed.
    error : Exception or None
        What went wrong, for the service's log and counters.
    """
    try:
        split = frames.index(b"", 1)
        envelope, body = frames[:split + 1], frames[split + 1:]
    except ValueError:  # a DEALER that sent no delimiter: answer it in kind
        envelope, body = frames[:1], frames[1:]
    cmd = rid = None
    try:
        if len(body) != 1:
            raise ProtocolError(f"control request has {len(body)} body frames, expected 1")
        cmd, args = decode_request(body[0])
        rid = args.pop("id", None)
        if not isinstance(rid, (int, str)) or isinstance(rid, bool):
            rid = None
        result = handle(cmd, args)
    except Exception as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        # Without its traceback: the traceback's frames reach the caller's frame,
        # which holds the error; that cycle would keep the request's frames
        # (up to the socket's message size) alive until the cyclic GC runs.
        exc.__traceback__ = exc.__context__ = exc.__cause__ = None
        return envelope + [encode_error(type(exc).__name__, str(message), rid)], cmd, exc
    if isinstance(result, ReplyFrames):
        return envelope + [encode_reply(result.result, rid)] + result.frames, cmd, None
    return envelope + [encode_reply(result, rid)], cmd, None


@dataclass(frozen=True, slots=True)
class Reply:
    ok: bool
    request_id: object = None
    result: object = None
    error_type: str | None = None
    error_message: str | None = None


def decode_reply(frame) -> Reply:
    f = Fields(unpack_map(frame, "control reply"), "control reply")
    f.version()
    ok = f.m.get("ok")
    rid = f.m.get("id")
    if ok is True:
        return Reply(True, rid, f.m.get("result"))
    if ok is False:
        err = f.m.get("error")
        if not isinstance(err, dict):
            raise ProtocolError("control reply: field 'error' must be a map")
        e = Fields(err, "control reply error")
        return Reply(False, rid, None, e.str("type", max_len=64), e.str("message", max_len=65536))
    raise ProtocolError(f"control reply: field 'ok' must be true or false, not {ok!r}")
