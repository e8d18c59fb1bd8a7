"""The mushu wire protocol: every message on the bus and every control request is encoded and decoded here.

``docs/protocol.md`` is the normative description; this package is its only
implementation, shared by the services and the client, by concern:

- :mod:`.codec`: limits, names, topics, msgpack framing, field validation;
- :mod:`.blocks`: data blocks (a small metadata frame plus a raw buffer) and
  the fast path that reads a session's headers by their byte layout;
- :mod:`.messages`: stream info, markers, marker stream info, and decoding any
  bus message;
- :mod:`.requests`: control requests and replies.

Everything public is importable from here.
"""

from .blocks import Block, BlockHeader, decode_block_frames, decode_block_header, encode_block, encode_block_header
from .codec import (DATA, DTYPE, INFO, MARKER, MAX_BLOCK_SAMPLES, MAX_CHANNELS, MAX_HEADER_BYTES, MAX_LABEL_LENGTH,
                    MAX_MARKER_BYTES, MAX_QUEUED_REQUESTS, MAX_REQUEST_BYTES, PLAIN_SCALARS, PROTOCOL_VERSION,
                    SESSION_ID, STREAM_NAME, Fields, ProtocolError, check_plain, data_topic, info_topic, marker_topic,
                    pack, split_topic, unpack_map)
from .messages import (STATES, Marker, MarkerStreamInfo, StreamInfo, decode_info, decode_marker, decode_marker_info,
                       decode_message, encode_info, encode_marker, encode_marker_info)
from .requests import (BUILTIN_ERRORS, COMMAND, Reply, ReplyFrames, decode_reply, decode_request, dispatch,
                       encode_error, encode_reply, encode_request, serve_request)

__all__ = [name for name in dir() if not name.startswith("_") and name not in ("blocks", "codec", "messages",
                                                                                 "requests")]
