"""BusReader: decoded messages from a real SUB socket, malformed ones counted and skipped."""

import time

import numpy as np
import pytest
import zmq

from mushu_client.bus import RECV_INTO_MAX, BusReader
from mushu_client.protocol import Block, BlockHeader, StreamInfo, encode_block, encode_block_header, encode_info

SESSION = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def pub_reader():
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    reader = BusReader(sub, "test")
    deadline = time.monotonic() + 5
    while not sub.poll(10):  # the subscription reaches the publisher
        assert time.monotonic() < deadline
        pub.send_multipart(encode_info(_info()))
    while reader.receive() is not None:
        pass
    yield pub, reader
    ctx.destroy(linger=0)


def _info():
    return StreamInfo("eeg", SESSION, "rampamp", "running", 1000.0, "<f4", ["a", "b"], ["uV", "uV"], -1, 0, 0)


def _block(seq, n=3, channels=2):
    h = BlockHeader("eeg", SESSION, seq, seq * n, n, channels, 1000.0, "<f4", 123)
    data = np.arange(seq, seq + n * channels, dtype="<f4").reshape(n, channels)
    return h, data


def _next(reader, timeout=5.0):
    """The next message that decodes (receive() returns None once the malformed ones waiting are skipped)."""
    deadline = time.monotonic() + timeout
    while (msg := reader.receive()) is None:
        assert reader.wait(deadline - time.monotonic()), "nothing arrived"
    return msg


def test_blocks_and_info_decode(pub_reader):
    pub, reader = pub_reader
    h, data = _block(1)
    pub.send_multipart(encode_block(h, data))
    pub.send_multipart(encode_info(_info()))
    block = _next(reader)
    assert isinstance(block, Block) and block.header == h
    np.testing.assert_array_equal(block.data, data)
    assert block.data.flags.writeable  # received into its own array: no copy needed by the consumer
    assert isinstance(_next(reader), StreamInfo)
    assert reader.receive() is None and reader.bad_messages == 0


def test_large_payload_arrives_without_recv_into(pub_reader):
    pub, reader = pub_reader
    n = RECV_INTO_MAX // (4 * 64) + 1
    h = BlockHeader("eeg", SESSION, 0, 0, n, 64, 1000.0, "<f4", 0)
    data = np.random.default_rng(1).random((n, 64), dtype=np.float32)
    pub.send_multipart(encode_block(h, data))
    block = _next(reader)
    np.testing.assert_array_equal(block.data, data)


def test_malformed_messages_are_counted_and_skipped(pub_reader):
    pub, reader = pub_reader
    h, data = _block(7)
    topic, header = b"data/eeg/", encode_block_header(h)
    bad = [
        [topic],                                   # 1 frame
        [topic, header],                           # 2 frames
        [topic, header, data.tobytes(), b"x"],     # 4 frames
        [topic, header, data.tobytes()[:-4]],      # short payload
        [topic, header, data.tobytes() + b"1234"],  # long payload (truncated by recv_into)
        [topic, b"\xc1garbage", data.tobytes()],   # header not msgpack
        [b"data/e e g/", header, data.tobytes()],  # invalid topic
        [b"info/eeg/", b"\x80"],                   # empty map as stream info
    ]
    for frames in bad:
        pub.send_multipart(frames)
    pub.send_multipart(encode_block(h, data))
    block = _next(reader)
    assert block.header == h
    np.testing.assert_array_equal(block.data, data)
    assert reader.bad_messages == len(bad)
    assert reader.receive() is None
