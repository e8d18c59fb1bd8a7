"""The g.USBamp driver against an emulated amplifier (tests/usb_fakes.py), directly and through the amp service."""

import errno
import struct
import time

import numpy as np
import pytest
import usb.core

from hardware_checks import fresh_usb_backend  # noqa: F401 (an autouse fixture)
from hardware_checks import (amp_through_service, available_only_with_its_device, collect, count_until_silence_error,
                             read_for, read_until_error, stamp_errors, unplugging_wakes_a_waiting_read,
                             vanishing_device_reaches_client_and_status)
from mushu_amp.drivers import gtec_filters
from mushu_amp.drivers.gusbamp import SUPPORTED_FS, GUSBamp
from usb_fakes import FakeBackend, GUSBampEmulator, gusbamp_values

NULL = struct.pack("<18d", 1.0, *[0.0] * 17)


def make(stall_timeout=2.0, **emu_kw):
    emu = GUSBampEmulator(**emu_kw)
    return GUSBamp(backend=FakeBackend(emu), stall_timeout=stall_timeout), emu


def expected(n, mode="data"):
    values = gusbamp_values(0, n)
    eeg = values[:, :16]
    if mode == "data":
        eeg /= np.float32(8.15)
    elif mode == "impedance":
        eeg[:] = eeg * 1e6 / (1e4 - eeg) - 1e4
    return values


def test_initialisation_sends_the_captured_sequence():
    amp, emu = make()
    cal = bytes((0x03, 0xD0, 0x07, 0x02, 0x00, 0xFF, 0x07))
    assert emu.requests == [
        (0xC0, 0, b""), (0xC2, 1, b""),                     # data mode
        (0xB6, 0x80, b""), (0xB5, 0x80, b""),
        (0xB9, 0, bytes(range(1, 17))),                    # all 16 channels
        (0xCD, 0, b""), (0xD3, 1, b""), (0xCA, 1, b""), (0xC8, 1, bytes(16)),
        (0xBF, 0, b""), (0xBE, 0, b""),                     # no common reference / ground
        (0xCB, 0, cal),                                     # sine calibration signal
        *[(0xC6, ch, NULL) for ch in range(1, 17)],
        *[(0xC7, ch, NULL) for ch in range(1, 17)],
        (0xB6, 128, b""),
    ]
    assert len(NULL) == 144 and emu.refused == []
    assert (emu.fs, emu.mode, emu.channels, emu.claimed) == (128, "data", list(range(1, 17)), {0})
    assert amp.get_sampling_frequency() == 128
    assert amp.get_channels() == [f"Ch{i}" for i in range(1, 17)] + ["Trigger"]


@pytest.mark.parametrize("vendor", [0x153C, 0x15C3])
def test_both_vendor_ids_are_found(vendor):
    amp, emu = make(vendor=vendor)
    assert emu.fs == 128


def test_no_device_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"no g.USBamp found \(USB id 153c:0001 or 15c3:0001\); is it plugged in\?"):
        GUSBamp(backend=FakeBackend())


def test_is_available_only_with_a_device(monkeypatch):
    available_only_with_its_device(monkeypatch, GUSBamp, "gusbamp_backend", absent="epoc_backend")


@pytest.mark.parametrize("fs", SUPPORTED_FS)
def test_every_supported_rate_streams_whole_frames_at_that_rate(fs):
    amp, emu = make()
    amp.configure(fs=fs)
    assert emu.fs == fs and emu.requests[-1] == (0xB6, fs, b"") and amp.get_sampling_frequency() == fs
    amp.start()
    t0 = time.monotonic()
    data = read_for(amp, 0.3 if fs >= 128 else 0.6)
    elapsed = time.monotonic() - t0
    amp.stop()
    assert not emu.running
    frames_per_read = max(1, round(fs / 100))
    assert set(emu.reads) == {frames_per_read * 68}  # whole frames, about 10 ms of them
    # never faster than the device; slower only when this process cannot keep up (a loaded machine)
    assert 0.5 * fs * elapsed - frames_per_read <= len(data) <= fs * elapsed + frames_per_read
    np.testing.assert_array_equal(data, expected(len(data)))


def test_frames_split_across_reads_are_reassembled():
    amp, emu = make(max_read=100)  # 100 bytes: a frame and a half per read
    amp.configure(fs=2400)
    amp.start()
    data = read_for(amp, 0.2)
    assert len(data) > 50
    np.testing.assert_array_equal(data, expected(len(data)))


@pytest.mark.parametrize("mode, unit", [("data", "uV"), ("impedance", "Ohm"), ("calibrate", "uV")])
def test_modes_select_the_device_mode_and_convert_values(mode, unit):
    amp, emu = make()
    amp.configure(fs=512, mode=mode)
    select = {"data": 0xC0, "calibrate": 0xC1, "impedance": 0xC9}[mode]
    code = {"data": 1, "calibrate": 2, "impedance": 3}[mode]
    assert emu.requests[-38:-36] == [(select, 0, b""), (0xC2, code, b"")] and emu.mode == mode
    assert amp.unit == unit
    amp.start()
    data = read_for(amp, 0.1)
    np.testing.assert_array_equal(data, expected(len(data), mode))
    np.testing.assert_array_equal(data[:, 16], gusbamp_values(0, len(data))[:, 16])  # trigger: unconverted


def test_common_ground_reference_and_calibration_signal():
    amp, emu = make()
    amp.configure(common_ground=True, common_reference=[True, False, True, False], calibration_signal="square")
    assert (emu.ground, emu.reference, emu.cal_signal) == (0b1111, 0b0101, "square")
    amp.configure()
    assert (emu.ground, emu.reference, emu.cal_signal) == (0, 0, "sine")


def coefficients(message):
    values = np.array(message)
    return values[:9], values[9:]


def test_filters_reach_every_channel_and_filter_as_specified():
    amp, emu = make()
    amp.configure(fs=256, bandpass=[0.1, 100, 8], notch=(48, 52, 256, 4))
    assert sorted(emu.bandpass) == sorted(emu.notch) == list(range(1, 17))
    assert len({emu.bandpass[ch] for ch in emu.bandpass}) == 1 and len(set(emu.notch.values())) == 1
    b, a = coefficients(emu.bandpass[1])
    assert a[0] == 1.0 and np.max(np.abs(np.roots(np.trim_zeros(a, "b")))) < 1
    for f, db in ((0.1, -3.01), (100, -3.01), (10, 0.0)):
        assert gtec_filters.response_db(b, a, f, 256) == pytest.approx(db, abs=0.1)
    b, a = coefficients(emu.notch[1])
    assert gtec_filters.response_db(b, a, 50, 256) < -40
    assert gtec_filters.response_db(b, a, 10, 256) == pytest.approx(0, abs=0.1)
    amp.configure(fs=256)  # no filters again: the null filter on every channel
    assert set(emu.bandpass.values()) == set(emu.notch.values()) == {struct.unpack("<18d", NULL)}


def test_filter_design_matches_scipy():
    signal = pytest.importorskip("scipy.signal")
    for order, hp, lp, fs, btype in ((8, 0.1, 100, 256, "bandpass"), (4, 1, 1000, 4800, "bandpass"),
                                     (4, 48, 52, 512, "bandstop"), (2, 58, 62, 38400, "bandstop")):
        b, a = gtec_filters.butterworth(order, hp, lp, fs, stop=btype == "bandstop")
        ref_b, ref_a = signal.iirfilter(order // 2, [hp / (fs / 2), lp / (fs / 2)], ftype="butter", btype=btype)
        np.testing.assert_allclose(b, ref_b, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(a, ref_a, rtol=1e-9)


def test_every_offered_filter_is_stable_and_fits_a_message():
    for fs in SUPPORTED_FS:
        offered = gtec_filters.choices(fs)
        assert offered["bandpass"], fs
        for kind in ("bandpass", "notch"):
            for hp, lp, order in offered[kind]:
                b, a = coefficients(struct.unpack("<18d", gtec_filters.message(kind, hp, lp, fs, order)))
                assert a[0] == 1 and np.max(np.abs(np.roots(np.trim_zeros(a, "b")))) < 1


def test_presets_are_valid_configurations():
    amp, emu = make()
    for _label, kwargs in amp.presets:
        amp.configure(**kwargs)
    assert emu.refused == []


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"fs": 100}, ValueError, "cannot sample at 100 Hz; supported: 32, 64, 128, 256, 512, 600, 1200, 2400, "
                              "4800, 9600, 19200, 38400 Hz"),
    ({"fs": "256"}, ValueError, "cannot sample at '256' Hz"),
    ({"fs": True}, ValueError, "cannot sample at True Hz"),
    ({"mode": "bogus"}, ValueError, "mode must be one of 'data', 'calibrate', 'impedance', not 'bogus'"),
    ({"bandpass": (0.3, 30, 8)}, ValueError, "no bandpass filter 0.3-30 Hz of order 8 at 128 Hz; "
                                             "offered at 128 Hz (hp-lp Hz): order 2: 0.01-10"),
    ({"fs": 38400, "bandpass": (0.1, 30, 8)}, ValueError, "no bandpass filter 0.1-30 Hz of order 8 at 38400 Hz"),
    ({"fs": 256, "bandpass": (0.1, 30, 512, 8)}, ValueError, "is for 512 Hz but fs is 256 Hz"),
    ({"bandpass": "0.1-30"}, TypeError, "bandpass must be None, (hp, lp, order) or (hp, lp, fs, order)"),
    ({"bandpass": (0.1, 30)}, TypeError, "bandpass must be None"),
    ({"notch": (58, 62, 4)}, ValueError, "no notch filter 58-62 Hz of order 4 at 128 Hz; offered at 128 Hz "
                                         "(hp-lp Hz): order 2: 48-52; order 4: 48-52"),
    ({"fs": 64, "notch": (48, 52, 4)}, ValueError, "offered at 64 Hz (hp-lp Hz): none"),
    ({"common_ground": "yes"}, TypeError, "common_ground must be a bool or 4 bools (groups A, B, C, D)"),
    ({"common_reference": [True, False]}, TypeError, "common_reference must be a bool or 4 bools"),
    ({"calibration_signal": "triangle"}, ValueError, "calibration_signal must be one of 'square', 'sawtooth', "
                                                     "'sine', 'whitenoise'"),
    ({"gain": 3}, TypeError, "unexpected keyword argument 'gain'"),
])
def test_configure_refuses_what_the_device_cannot_do_and_sends_nothing(kwargs, exc, words):
    amp, emu = make()
    sent = len(emu.requests)
    with pytest.raises(exc) as info:
        amp.configure(**kwargs)
    assert words in str(info.value)
    assert len(emu.requests) == sent and amp.get_sampling_frequency() == 128


def test_the_emulator_refuses_unknown_requests_and_settings_while_streaming():
    amp, emu = make()
    with pytest.raises(usb.core.USBError) as info:
        amp._dev.ctrl_transfer(0x40, 0x99, 0, 0, None)
    assert info.value.errno == errno.EPIPE and emu.refused[-1][:2] == (0x99, 0)
    amp.start()
    with pytest.raises(OSError, match=r"g.USBamp: control request 0xc0 failed: .*Pipe error"):
        amp.configure(fs=256)


def test_silence_returns_empty_blocks_then_a_timeout_error_without_hanging():
    amp, emu = make(stall_timeout=0.5, stall_after=0.2)
    amp.configure(fs=256)
    amp.start()
    got, empty = count_until_silence_error(amp, r"g.USBamp sent no data for 0\.[5-9] s; is the amplifier switched on")
    assert 40 <= got <= 56 and empty >= 1  # 0.2 s at 256 Hz, then timed-out reads


def test_unplugging_mid_stream_is_a_clear_error_and_stop_stays_quiet():
    amp, emu = make(unplug_after=0.3)
    amp.configure(fs=1200)
    amp.start()
    data = read_until_error(amp, ConnectionError, r"g.USBamp disconnected: reading samples failed \(.*No such device",
                            within=1.0)
    assert len(data) > 200
    np.testing.assert_array_equal(data, expected(len(data)))
    amp.stop()  # the service calls stop() after a failure: nothing left to tell the device
    assert not FakeBackend(emu).enumerate_devices()


def test_start_after_a_reconnect_reopens_and_reinitialises_the_amplifier():
    emu = GUSBampEmulator(unplug_after=0.2)
    backend = FakeBackend(emu)
    amp = GUSBamp(backend=backend)
    amp.configure(fs=512, notch=(48, 52, 4))
    amp.start()
    read_until_error(amp, ConnectionError, "reconnect it and start again", within=1.0)
    with pytest.raises(RuntimeError, match="no g.USBamp found"):
        amp.start()
    backend.devices.append(GUSBampEmulator())  # plugged in again: a new device
    amp.start()
    again = backend.devices[-1]
    assert again.requests[:3] == [(0xC0, 0, b""), (0xC2, 1, b""), (0xB6, 0x80, b"")] and again.refused == []
    assert again.fs == 512 and set(again.notch.values()) == set(emu.notch.values()) and again.running
    data = read_for(amp, 0.1)
    np.testing.assert_array_equal(data, expected(len(data)))


def test_unplugging_wakes_a_waiting_read():
    unplugging_wakes_a_waiting_read(*make(stall_after=0.0, stall_timeout=30), "g.USBamp disconnected")


# -- through the amp service process -------------------------------------------------


def test_service_reads_every_value_from_an_emulated_gusbamp(spawn_amp):
    with amp_through_service(spawn_amp, "gusbamp_backend", "gusbamp", absent="epoc") as amp:
        amp.configure(fs=512, bandpass=[0.1, 100, 8], notch=[48, 52, 4])
        assert amp.get_sampling_frequency() == 512 and amp.get_channels()[-1] == "Trigger"
        amp.start()
        data = collect(amp, 600)
        amp.stop()
        data = np.concatenate([data, amp.get_data()[0]])
        assert data.shape[1] == 17 and len(data) == amp.status()["next_sample"]
        np.testing.assert_array_equal(data, expected(len(data)))


def test_one_get_data_after_stop_returns_every_sample_up_to_the_stop(spawn_amp):
    # The driver's read blocks until the device sends, so a stop request waits for it and
    # its reply can overtake that read's block on the bus: the get_data after stop() must
    # wait for the block (or fetch it) rather than return the part that was already there.
    with amp_through_service(spawn_amp, "gusbamp_backend", "gusbamp", absent="epoc") as amp:
        amp.configure(fs=1200)
        for _ in range(20):
            amp.start()
            data = [amp.get_data()[0]]
            amp.stop()
            data.append(amp.get_data()[0])
            assert sum(map(len, data)) == amp.status()["next_sample"]
            np.testing.assert_array_equal(np.concatenate(data), expected(sum(map(len, data))))


def test_service_reports_a_vanished_gusbamp_to_the_client(spawn_amp):
    vanishing_device_reaches_client_and_status(spawn_amp, "gusbamp_vanishing_backend", "gusbamp",
                                               "g.USBamp disconnected")


@pytest.mark.parametrize("declared_ms", [0.0, 2.0])
def test_a_late_drifting_gusbamp_is_stamped_at_acquisition_less_what_is_declared(spawn_amp, tmp_path, declared_ms):
    # transfers arrive 2-4 ms after their last frame; the device's clock is 100 ppm fast
    errors, clock = stamp_errors(spawn_amp, tmp_path, "gusbamp_late_backend", "gusbamp",
                                 lambda data: (int(data[0, 16]) - 16) // 17,  # the trigger channel counts frames
                                 fs=1200, latency_ms=declared_ms)
    assert clock["model"] == "fitted" and clock["latency_ns"] == declared_ms * 1e6
    assert abs(clock["drift_ppm"] - 100) < 40, clock
    if declared_ms:  # what is left is the spread of the least latency over the fit
        assert np.abs(errors).max() < 1e6 and abs(np.median(errors)) < 0.5e6, np.percentile(errors, [0, 50, 100])
    else:  # the device's least latency, which only a declaration can tell
        assert np.median(errors) > 1.5e6, np.percentile(errors, [0, 50, 100])
