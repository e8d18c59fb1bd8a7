"""The Emotiv EPOC driver against an emulated dongle (tests/usb_fakes.py), directly and through the amp service."""

import math

import numpy as np
import pytest

from hardware_checks import fresh_usb_backend  # noqa: F401 (an autouse fixture)
from hardware_checks import (amp_through_service, available_only_with_its_device, collect, count_until_silence_error,
                             read_for, read_until_error, stamp_errors, unplugging_wakes_a_waiting_read,
                             vanishing_device_reaches_client_and_status)
from mushu_amp.drivers.epoc import EEG, Epoc, battery_percent, epoc_key
from usb_fakes import EPOC_SERIAL, EpocEmulator, FakeBackend, epoc_fields

NAN = math.nan


def make(stall_timeout=3.0, **emu_kw):
    emu = EpocEmulator(**emu_kw)
    return Epoc(backend=FakeBackend(emu), stall_timeout=stall_timeout), emu


def expected_rows(first, n):
    """The samples of reports first .. first+n-1, battery and quality held from report ``first`` on."""
    battery, quality, rows = NAN, [NAN] * 14, []
    for k in range(first, first + n):
        f = epoc_fields(k)
        counter = f["first"]
        if counter >= 128:
            battery, counter = 72, 128
        elif counter % 64 < 14:
            quality[counter % 64] = f["quality"]
        rows.append(f["eeg"] + [counter, battery, *f["gyro"]] + quality)
    return np.array(rows, np.float32)


def check_stream(data):
    """Every row is the emulator's report k (F3 carries k) and no report is missing."""
    first = int(data[0, 0])
    np.testing.assert_array_equal(data[:, 0], np.arange(first, first + len(data)))
    np.testing.assert_array_equal(data, expected_rows(first, len(data)))


def test_keys_from_the_serial_number():
    assert EPOC_SERIAL == "SN201211151227GM"
    assert epoc_key(EPOC_SERIAL) == b"M\x00GT7\x102BM\x00GH7\x002P"
    assert epoc_key(EPOC_SERIAL, "consumer") == b"M\x00GH7\x002TM\x10GB7\x002P"
    with pytest.raises(ValueError, match="16 characters"):
        epoc_key("SN1234")


def test_opening_detaches_the_hid_driver_and_claims_both_interfaces():
    amp, emu = make()
    assert emu.kernel == set() and emu.claimed == {0, 1} and emu.refused == []
    assert amp.get_sampling_frequency() == 128
    assert amp.get_channels() == [*EEG, "COUNTER", "BATTERY", "GYRO_X", "GYRO_Y", *(f"CQ_{c}" for c in EEG)]
    assert EEG == ("F3", "FC5", "AF3", "F7", "T7", "P7", "O1", "O2", "P8", "T8", "F8", "AF4", "FC6", "F4")


def test_no_dongle_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"no Emotiv EPOC dongle found \(USB id 1234:ed02\)"):
        Epoc(backend=FakeBackend())


def test_is_available_only_with_a_dongle(monkeypatch):
    available_only_with_its_device(monkeypatch, Epoc, "epoc_backend", absent="no_device_backend")


def test_parse_places_every_field_at_its_bits():
    amp, _emu = make()
    plain = bytearray(32)
    plain[0] = 5                        # counter 5: the quality field is P7's
    plain[1], plain[2] = 0xFF, 0xFC     # F3: bits 8-21 all set
    plain[13], plain[14] = 0x3F, 0xFF   # quality: bits 106-119 all set
    plain[16] = 0x02                    # O2: bit 134, its most significant bit
    plain[28] = 0x01                    # F4: bit 231, its least significant bit
    plain[29], plain[30] = 0x12, 0x34   # gyroscope
    row = amp.parse(bytes(plain))
    eeg = dict(zip(EEG, row[:14]))
    assert eeg == {**dict.fromkeys(EEG, 0), "F3": 16383, "O2": 8192, "F4": 1}
    np.testing.assert_array_equal(row[14:18], [5, NAN, 0x12, 0x34])
    np.testing.assert_array_equal(row[18:], [NAN] * 5 + [16383] + [NAN] * 8)


def test_battery_reports_and_held_values():
    amp, _emu = make()
    quality = amp.parse(bytes([64 + 2]) + bytes(12) + b"\x00\x07" + bytes(17))[18:]  # counter 66: AF3
    assert quality[2] == 7 and np.isnan(np.delete(quality, 2)).all()
    row = amp.parse(bytes([0xF0]) + bytes(31))
    assert row[14] == 128 and row[15] == 72 and row[20] == 7  # battery report: quality still held
    assert amp.parse(bytes([20]) + bytes(31))[15] == 72 and amp.parse(bytes([20]) + bytes(31))[20] == 7
    assert [battery_percent(v) for v in (255, 248, 247, 240, 226, 225, 128)] == [100, 100, 99, 72, 1, 0, 0]


def test_reports_are_decrypted_and_parsed_to_the_known_values():
    amp, emu = make()
    amp.start()
    data = read_for(amp, 1.3)  # past report 128, the first battery report
    assert 150 <= len(data) <= 175 and emu.dropped == 0
    check_stream(data)
    assert data[:, 15][-1] == 72


def test_consumer_variant_uses_the_consumer_key():
    amp, _emu = make(research=False)
    amp.start()
    garbled = read_for(amp, 0.2)
    assert not (np.diff(garbled[:, 0]) == 1).all()  # the research key does not decrypt it
    amp.stop()
    amp.configure(variant="consumer")
    amp.start()
    check_stream(read_for(amp, 0.2))


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"variant": "pro"}, ValueError, "variant must be one of 'research', 'consumer', not 'pro'"),
    ({"variant": 1}, ValueError, "variant must be one of"),
    ({"fs": 256}, TypeError, "unexpected keyword argument 'fs'"),
])
def test_configure_refusals(kwargs, exc, words):
    amp, _emu = make()
    with pytest.raises(exc) as info:
        amp.configure(**kwargs)
    assert words in str(info.value) and amp.variant == "research"


def test_a_silent_headset_gives_empty_blocks_then_a_timeout_error():
    amp, _emu = make(stall_timeout=0.5, stall_after=0.3)
    amp.start()
    rows, empty = count_until_silence_error(amp, r"Emotiv EPOC sent no data for 0\.[5-9] s; is the headset switched on")
    assert empty >= 1 and 30 <= rows <= 45


def test_unplugging_mid_stream_is_a_clear_error():
    amp, _emu = make(unplug_after=0.4)
    amp.start()
    check_stream(read_until_error(amp, ConnectionError,
                                  r"Emotiv EPOC disconnected: reading a report failed \(.*No such device", within=1.0))


def test_start_after_a_reconnect_reopens_the_dongle_with_its_key():
    backend = FakeBackend(EpocEmulator(unplug_after=0.2))
    amp = Epoc(backend=backend)
    amp.start()
    read_until_error(amp, ConnectionError, "reconnect it and start again", within=1.0)
    with pytest.raises(RuntimeError, match="no Emotiv EPOC dongle found"):
        amp.start()
    backend.devices.append(EpocEmulator(serial="SN201309170042XY"))  # another dongle: another key
    amp.start()
    check_stream(read_for(amp, 0.2))


def test_unplugging_wakes_a_waiting_read():
    unplugging_wakes_a_waiting_read(*make(stall_after=0.0, stall_timeout=30), "Emotiv EPOC disconnected")


# -- through the amp service process -------------------------------------------------


def test_service_reads_an_emulated_epoc(spawn_amp):
    with amp_through_service(spawn_amp, "epoc_backend", "epoc", absent="gusbamp") as amp:
        amp.configure(variant="research")
        assert amp.get_sampling_frequency() == 128 and amp.get_channels()[:3] == ["F3", "FC5", "AF3"]
        amp.start()
        data = collect(amp, 160)
        amp.stop()
        assert data.shape[1] == 32
        check_stream(data)


def test_service_reports_a_vanished_epoc_to_the_client(spawn_amp):
    vanishing_device_reaches_client_and_status(spawn_amp, "epoc_vanishing_backend", "epoc", "Emotiv EPOC disconnected")


def test_a_late_drifting_epoc_is_stamped_at_acquisition_less_what_is_declared(spawn_amp, tmp_path):
    # reports arrive 2-4 ms after they were acquired; the headset's clock is 100 ppm fast
    errors, clock = stamp_errors(spawn_amp, tmp_path, "epoc_late_backend", "epoc",
                                 lambda data: int(data[0, 0]),  # F3 holds the report's number
                                 latency_ms=2.0)
    assert clock["model"] == "fitted" and clock["latency_ns"] == 2_000_000
    assert np.abs(errors).max() < 1e6 and abs(np.median(errors)) < 0.5e6, np.percentile(errors, [0, 50, 100])
