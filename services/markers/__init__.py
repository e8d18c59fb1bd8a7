"""mushu markers service: receives markers and publishes them as a numbered stream.

``core`` holds the rules (framing, labels, numbering, history; no sockets),
``service`` the single-threaded process around it.

Ingress
-------
TCP and UDP, port 12344 on 127.0.0.1 unless configured (as libmushu, and
pyff's ``send_udp``): each marker is a UTF-8 label ended by ``\\n`` (or
``\\r\\n``); a packet or datagram may carry several. A UDP datagram also
ends its last label, so ``b"S1"`` is one marker; an empty datagram is
ignored. A TCP sender that closes the connection ends its last label too.
A marker is stamped (``time.monotonic_ns()``) when the read that delivered
its first byte returns.

ZeroMQ: a PUSH socket connected to the PULL ingress (``MUSHU_MARKERS_INGRESS``,
default ``tcp://127.0.0.1:12349``) sends one-frame messages, either a plain
UTF-8 label, or a msgpack map ``{"label": str, "t_ns": int}``, ``t_ns``
optional: the sender's own ``time.monotonic_ns()`` (same host), used instead
of the receive time and flagged ``"sender_time"``.

Bad input (counted in ``status``, logged, never fatal to anyone else)
--------------------------------------------------------------------
- empty lines and empty datagrams: ignored;
- labels over ``MAX_LABEL_LENGTH`` characters: refused; on TCP the rest of
  the line is discarded and the connection kept (at most one label of
  bytes is ever buffered per connection);
- bytes that are not UTF-8: replaced by U+FFFD, flag ``"invalid_utf8"``;
- control characters other than tab (NUL, DEL, C1, a lone ``\\r``, ...):
  replaced by U+FFFD, flag ``"control_chars"``;
- a ZeroMQ map without a string ``label`` or with a non-integer ``t_ns``,
  or a multi-frame message: refused;
- TCP connections silent for ``--idle-timeout`` s (300) are closed; beyond
  ``--max-connections`` (256), or ``--max-connections-per-sender`` (64) from
  one address, new ones are accepted and closed at once;
- with an allowlist (``--allow``), TCP connections from other addresses are
  closed at accept and their datagrams dropped;
- markers beyond a sender address's rate (``--rate`` 1000/s, ``--burst``
  1000; this host is exempt unless ``--rate-exempt`` says otherwise) and
  labels over ``--max-label-bytes`` (4096) are refused.

``senders`` holds the allowlist and the limits (no sockets either).
"""
