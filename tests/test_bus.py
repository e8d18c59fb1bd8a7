"""BusReader: decoded messages from a real SUB socket, malformed ones counted and skipped."""

import dataclasses
import time

import numpy as np
import pytest
import zmq

from mushu_core.bus import MIN_HWM, queue_hwm, size_class, subscribe
from mushu_core.wire import Block, BlockHeader, StreamInfo, encode_block, encode_block_header, encode_info

SESSION = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def pub_reader():
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    reader = subscribe(f"tcp://127.0.0.1:{port}", [b""])
    deadline = time.monotonic() + 5
    while not reader.sock.poll(10):  # the subscription reaches the publisher
        assert time.monotonic() < deadline
        pub.send_multipart(encode_info(_info()))
    while reader.receive() is not None:
        pass
    yield pub, reader
    reader.close()
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
        assert reader.poll(deadline - time.monotonic()), "nothing arrived"
    return msg


def test_blocks_and_info_decode(pub_reader):
    pub, reader = pub_reader
    h, data = _block(1)
    pub.send_multipart(encode_block(h, data))
    pub.send_multipart(encode_info(_info()))
    block = _next(reader)
    assert isinstance(block, Block) and block.header == h
    np.testing.assert_array_equal(block.data, data)
    assert not block.data.flags.owndata  # a view of the received frame, not a copy
    assert isinstance(_next(reader), StreamInfo)
    assert reader.receive() is None and reader.bad_messages == 0


def test_a_large_payload_arrives_whole(pub_reader):
    pub, reader = pub_reader
    h = BlockHeader("eeg", SESSION, 0, 0, 5000, 64, 1000.0, "<f4", 0)
    data = np.random.default_rng(1).random((5000, 64), dtype=np.float32)
    pub.send_multipart(encode_block(h, data))
    block = _next(reader)
    np.testing.assert_array_equal(block.data, data)


def test_a_poll_tells_the_reader_whether_a_message_waits(pub_reader):
    pub, reader = pub_reader
    assert not reader.poll(0) and reader.ready is False
    pub.send_multipart(encode_block(*_block(1)))
    assert reader.poll(5.0) and reader.ready is True
    assert isinstance(reader.receive(), Block) and reader.ready is None
    # after a message nothing is known, so the reader polls again itself
    pub.send_multipart(encode_block(*_block(2)))
    assert isinstance(_next(reader), Block) and reader.receive() is None
    # a reader told "nothing" answers None until a poll says otherwise, even if a message came since
    assert not reader.poll(0)
    pub.send_multipart(encode_block(*_block(3)))
    assert reader.sock.poll(5000)  # it is there
    assert reader.receive() is None
    assert reader.poll(0) and reader.receive().header.seq == 3
    # an old poll's answer is forgotten, a fresh one kept
    assert not reader.poll(0)
    reader.forget_older_than(10**9)
    assert reader.ready is False
    reader.forget_older_than(0)
    assert reader.ready is None


def test_one_reader_follows_several_publishers_in_arrival_order():
    ctx = zmq.Context.instance()
    pubs = [ctx.socket(zmq.PUB) for _ in range(2)]
    endpoints = [f"tcp://127.0.0.1:{p.bind_to_random_port('tcp://127.0.0.1')}" for p in pubs]
    reader = subscribe(endpoints, [b"data/eeg/", b"info/eeg/"])
    try:
        deadline = time.monotonic() + 5
        sessions = [f"{i:032x}" for i in range(2)]
        seen = set()
        while seen != set(sessions):  # both connections up: each publisher's info gets through
            assert time.monotonic() < deadline, "a publisher never connected"
            for p, session in zip(pubs, sessions):
                p.send_multipart(encode_info(dataclasses.replace(_info(), session=session)))
            if reader.poll(0.05):
                while (msg := reader.receive()) is not None:
                    seen.add(msg.session)
        while reader.poll(0.1):  # the infos still on their way
            while reader.receive() is not None:
                pass
        order = []
        for seq in range(6):
            pubs[seq % 2].send_multipart(encode_block(*_block(seq)))
            order.append(_next(reader).header.seq)
        assert order == list(range(6))
        assert reader.source == " and ".join(endpoints)
    finally:
        reader.close()
        for p in pubs:
            p.close(linger=0)


def test_malformed_messages_are_counted_and_skipped(pub_reader):
    pub, reader = pub_reader
    h, data = _block(7)
    topic, header = b"data/eeg/", encode_block_header(h)
    bad = [
        [topic],                                   # 1 frame
        [topic, header],                           # 2 frames
        [topic, header, data.tobytes(), b"x"],     # 4 frames
        [topic, header, data.tobytes()[:-4]],      # short payload
        [topic, header, data.tobytes() + b"1234"],  # long payload
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


def _until_read_on_the_new_socket(pub, reader, frames):
    """Publish ``frames`` until the reader has dropped its replaced socket and read one on the new one."""
    deadline = time.monotonic() + 5
    while True:
        assert time.monotonic() < deadline, "the new socket never received"
        pub.send_multipart(frames)
        replaced = len(reader.sockets) > 1
        if reader.poll(0.05) and reader.receive() is not None and not replaced and len(reader.sockets) == 1:
            return


def test_a_reader_queues_at_most_its_byte_budget_of_large_blocks():
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 1)  # the publisher queues next to nothing: what arrives was queued by the reader
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    reader = subscribe(endpoint, [b"data/eeg/"], rcvhwm=100_000, queue_bytes=16 * 2**20)
    try:
        assert reader.sock.getsockopt(zmq.RCVHWM) == 100_000 and reader.reopened == 0
        h = BlockHeader("eeg", SESSION, 0, 0, 4096, 64, 1000.0, "<f4", 123)  # 1 MiB of samples
        frames = encode_block(h, np.zeros((4096, 64), np.float32))
        deadline = time.monotonic() + 5
        while not reader.poll(0.05):  # until the subscription is through
            assert time.monotonic() < deadline, "nothing arrived"
            pub.send_multipart(frames)
        assert reader.receive().data.nbytes == 2**20
        # a new socket with the lower mark replaced the first one; the mark of a live socket never changes
        assert reader.reopened == 1 and reader.hwm == 16
        assert reader.sock.getsockopt(zmq.RCVHWM) == 16  # 16 MiB of 1 MiB blocks
        _until_read_on_the_new_socket(pub, reader, frames)
        while reader.poll(0.2):
            reader.receive()
        # the reader stalls while 200 MiB are published, at a pace it could take without the budget
        for _ in range(200):
            pub.send_multipart(frames)
            time.sleep(0.002)
        received = 0
        while reader.poll(0.5):
            received += reader.receive() is not None
        assert 0 < received <= 16 + 16, received  # its queue, the kernel's buffers; not 200
        assert reader.reopened == 1  # blocks of the same size: no more replacements
    finally:
        reader.close()
        pub.close(linger=0)


def test_a_replaced_socket_is_read_empty_first_and_repeats_are_left_to_the_consumer():
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    reader = subscribe(endpoint, [b"data/eeg/"], queue_bytes=64 * 2**20)
    try:
        deadline = time.monotonic() + 5
        while not reader.poll(0.02):
            assert time.monotonic() < deadline
            pub.send_multipart(encode_info(_info()))
            pub.send_multipart(encode_block(*_block(0)))
        while reader.poll(0.1):
            reader.receive()
        # small blocks, one large block (a new size class), small blocks: all queued before the reader looks
        sent = []
        for seq in range(1, 31):
            n = 8192 if seq == 10 else 3
            pub.send_multipart(encode_block(*_block(seq, n=n)))
            sent.append(seq)
        time.sleep(0.3)
        got = []
        while reader.poll(0.2):
            msg = reader.receive()
            if msg is not None:
                got.append(msg.header.seq)
        # everything the old socket held comes, in order, before anything from the new one
        assert got[:len(sent)] == sent
        assert reader.reopened == 1 and reader.hwm == queue_hwm(64 * 2**20, 100_000, size_class(8192 * 2 * 4))
        assert len(reader.sockets) == 1  # read empty, closed
        # the new socket delivers what is published from its subscription on
        for seq in range(31, 200):
            pub.send_multipart(encode_block(*_block(seq)))
            if reader.poll(0.01):
                while (msg := reader.receive()) is not None:
                    got.append(msg.header.seq)
            if got[-1] >= 150:
                break
        assert got[-1] >= 150 and got == sorted(got)
    finally:
        reader.close()
        pub.close(linger=0)


def test_small_blocks_keep_the_message_high_water_mark():
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind("inproc://queue-small")
    reader = subscribe("inproc://queue-small", [b"data/eeg/"], rcvhwm=1000, queue_bytes=16 * 2**20)
    try:
        pub.send_multipart(encode_block(*_block(0)))
        assert isinstance(_next(reader), Block)
        assert reader.sock.getsockopt(zmq.RCVHWM) == 1000 and reader.reopened == 0
        with pytest.raises(ValueError, match="positive"):
            subscribe("inproc://queue-small", [b"data/eeg/"], queue_bytes=0)
    finally:
        reader.close()
        pub.close(linger=0)


def test_the_high_water_mark_is_the_budget_in_messages_of_the_largest_size():
    assert queue_hwm(256 * 2**20, 10_000, 2**20) == 256
    assert queue_hwm(256 * 2**20, 10_000, 1000) == 10_000
    assert queue_hwm(2**20, 10_000, 2**20) == MIN_HWM
    assert [size_class(n) for n in (1, 2, 3, 1000, 1024, 1025)] == [1, 2, 4, 1024, 1024, 2048]
    with pytest.raises(ValueError, match="positive"):
        queue_hwm(0, 10, 10)
