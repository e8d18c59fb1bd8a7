"""Fetching what a consumer missed from a service's history (the Clone pattern's second step).

A consumer subscribes first, then asks the service's control socket for the
blocks (or markers) it has not got, and drops live messages the history
already delivered. These generators do the asking: as many requests as it
takes, each reply decoded and checked, and they stop at the first failure
(logged) or when the history has nothing newer, so the caller can declare
the rest lost.
"""

from __future__ import annotations

import logging

from mushu_core.errors import ServiceUnavailable
from mushu_core.wire import ProtocolError, decode_block_frames, decode_marker

log = logging.getLogger("mushu.client")


def history_blocks(ctl, stream: str, session: str, from_sample: int, until: int):
    """Yield the blocks of ``session`` from the one holding ``from_sample`` to sample ``until``.

    Blocks older than ``from_sample`` the service no longer holds are simply
    not there: the first block yielded may start later (a gap).
    """
    position = from_sample
    while position < until:
        try:
            _result, frames = ctl.request("history", session=session, from_sample=position)
        except (ValueError, ServiceUnavailable) as exc:
            log.warning("history fetch failed: %s", exc)
            return
        progressed = False
        for header, payload in zip(frames[::2], frames[1::2]):
            try:
                block = decode_block_frames(header.bytes, payload, stream)
            except ProtocolError as exc:
                log.warning("malformed block in the history: %s", exc)
                return
            if block.header.first_sample >= until:
                return
            end = block.header.first_sample + block.header.n_samples
            if end > position:
                position, progressed = end, True
            yield block
        if not progressed:
            return


def history_markers(ctl, stream: str, session: str, from_seq: int, until: int):
    """Yield the markers of ``session`` with ``from_seq <= seq < until`` that the history holds."""
    position = from_seq
    while position < until:
        try:
            _result, frames = ctl.request("history", session=session, from_seq=position)
        except (ValueError, ServiceUnavailable) as exc:
            log.warning("marker history fetch failed: %s", exc)
            return
        progressed = False
        for frame in frames:
            try:
                marker = decode_marker(frame.bytes, stream)
            except ProtocolError as exc:
                log.warning("malformed marker in the history: %s", exc)
                return
            if marker.seq >= until:
                return
            if marker.seq >= position:
                position, progressed = marker.seq + 1, True
                yield marker
        if not progressed:
            return


def join_markers(mctl, clock, follower) -> bool:
    """Follow the markers service from where it is now (its session, its next marker); False if it does not
    answer yet (its markers are followed once it does). ``clock``: the :class:`~mushu_core.clock.ClockOffset`
    to the service, measured here too."""
    try:
        status = mctl.call("status")
        clock.measure()
    except ServiceUnavailable:
        log.info("markers service not answering yet: its markers are followed once it does")
        return False
    follower.follow(status["session"], status["last_seq"] + 1)
    return True
