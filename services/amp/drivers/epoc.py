"""Epoc: the Emotiv EPOC headset (14 EEG channels, about 128 Hz) over pyusb.

The headset talks to a USB dongle (USB id 1234:ed02), a HID device with two
interfaces; its reports arrive on interrupt IN endpoint 2 (0x82) of
interface 1, 32 bytes each, encrypted with AES-128 in ECB mode. The key is
made from the dongle's serial number (16 characters): the characters at
positions 15, 14, 13, 12, twice, interleaved with constants that differ
between research and consumer headsets (:data:`KEY_CONSTANTS`).

A decrypted report, numbering bits from the most significant bit of byte 0:

============  ==========================================================
bits 0-7      counter 0..127; 128 and above: a battery report instead
bits 8-105    F3 FC5 AF3 F7 T7 P7 O1, 14 bits each, most significant first
bits 106-119  contact quality of one electrode, chosen by the counter
bits 120-133  unused
bits 134-231  O2 P8 T8 F8 AF4 FC6 F4, 14 bits each
byte 29, 30   gyroscope X, Y
byte 31       unused
============  ==========================================================

Install with ``pip install mushu[usb]``; non-root access needs the udev
rules in ``services/amp/udev/60-mushu.rules``.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import usb.core
from Crypto.Cipher import AES

from . import usbdev
from .base import Amplifier

log = logging.getLogger(__name__)

NAME = "Emotiv EPOC"
DEVICE_IDS = ((0x1234, 0xED02),)
INTERFACES = (0, 1)
ENDPOINT_IN = 0x82
REPORT_BYTES = 32
FS = 128
READ_TIMEOUT_MS = 50

EEG = ("F3", "FC5", "AF3", "F7", "T7", "P7", "O1", "O2", "P8", "T8", "F8", "AF4", "FC6", "F4")
EEG_BITS = tuple(8 + 14 * i for i in range(7)) + tuple(134 + 14 * i for i in range(7))
QUALITY_BIT = 106
GYRO_BYTES = (29, 30)

#: The key's odd bytes; its even bytes are serial[15], [14], [13], [12], twice.
KEY_CONSTANTS = {
    "research": bytes((0x00, 0x54, 0x10, 0x42, 0x00, 0x48, 0x00, 0x50)),
    "consumer": bytes((0x00, 0x48, 0x00, 0x54, 0x10, 0x42, 0x00, 0x50)),
}
#: Battery percentage of battery-report values 226..247 (emokit's protocol notes);
#: 248 and above is full, 225 and below empty.
BATTERY_226_TO_247 = (1, 1, 1, 2, 3, 4, 6, 12, 20, 32, 46, 55, 62, 66, 72, 77, 82, 85, 89, 93, 97, 99)


def epoc_key(serial: str, variant: str = "research") -> bytes:
    """The AES-128 key of the headset whose dongle has serial number ``serial``."""
    if len(serial) < 16:
        raise ValueError(f"an EPOC serial number has 16 characters, not {serial!r}")
    chars = serial.encode("ascii")[15:11:-1] * 2
    return bytes(b for pair in zip(chars, KEY_CONSTANTS[variant]) for b in pair)


def battery_percent(value: int) -> int:
    """Charge in percent for the first byte of a battery report (128..255)."""
    if value >= 248:
        return 100
    return BATTERY_226_TO_247[value - 226] if value >= 226 else 0


class Epoc(Amplifier):
    """The Emotiv EPOC.

    Every report is one sample of 32 channels:

    - the 14 EEG channels ``F3 .. F4``: raw 14-bit values (Emotiv specifies
      0.51 uV per count);
    - ``COUNTER``: the report counter 0..127, 128 for battery reports;
    - ``BATTERY``: charge in percent from the last battery report;
    - ``GYRO_X``, ``GYRO_Y``: raw gyroscope bytes;
    - ``CQ_F3`` .. ``CQ_F4``: each electrode's last contact-quality value
      (raw 14 bits; the headset reports one electrode per report).

    ``BATTERY`` and the ``CQ_`` channels are NaN until first reported.
    After the dongle was disconnected, ``start()`` looks for it again.

    Parameters
    ----------
    backend : usb.backend.IBackend, optional
        pyusb backend; default: ``$MUSHU_USB_BACKEND``'s, else pyusb's own.
    stall_timeout : float
        Seconds without a report after which a started headset is an error.
    """

    presets = [["Research headset", {"variant": "research"}],
               ["Consumer headset", {"variant": "consumer"}]]
    unit = "a.u."

    def __init__(self, backend=None, stall_timeout: float = 3.0):
        self._backend = backend
        self._silence = usbdev.Silence(NAME, stall_timeout,
                                       "is the headset switched on and in range of the dongle?")
        self.variant = "research"
        self._open()

    def _open(self):
        """Find the dongle, read its serial number (the key) and claim it."""
        dev = usbdev.require_device(DEVICE_IDS, self._backend, f"{NAME} dongle")
        try:
            serial = dev.serial_number
        except (usb.core.USBError, ValueError) as exc:
            raise RuntimeError(f"{NAME}: cannot read the dongle's serial number: {exc}") from exc
        if not serial or len(serial) < 16:
            raise RuntimeError(f"{NAME}: unexpected dongle serial number {serial!r}")
        usbdev.claim(dev, INTERFACES, NAME)
        self._dev, self._serial, self._gone = dev, serial, False
        self.configure(self.variant)

    @staticmethod
    def is_available():
        return usbdev.find_device(DEVICE_IDS) is not None

    def configure(self, variant="research", latency_ms=None):
        """Choose the decryption key's variant.

        Parameters
        ----------
        variant : {"research", "consumer"}
            The kind of headset: the two use different keys.
        latency_ms : float, optional
            The headset's least delay from acquiring a sample to delivering
            it, if measured (0 to 1000 ms): subtracted from the sample times
            (:func:`usbdev.latency_ns`). None keeps the one declared before.
        """
        if not isinstance(variant, str) or variant not in KEY_CONSTANTS:
            raise ValueError(f"variant must be one of {', '.join(map(repr, KEY_CONSTANTS))}, not {variant!r}")
        if latency_ms is not None:
            self.latency_ns = usbdev.latency_ns(latency_ms)
        self._cipher = AES.new(epoc_key(self._serial, variant), AES.MODE_ECB)
        self.variant = variant
        self._reset_held()  # what the old key decoded means nothing now

    def _reset_held(self):
        self._battery = math.nan
        self._quality = [math.nan] * len(EEG)

    def start(self):
        # The headset streams whenever it is on; there is nothing to switch on.
        if self._gone:
            self._open()
        self._reset_held()
        self._silence.heard()

    def stop(self):
        pass

    def get_data(self):
        """Read one report; return it as one sample.

        Raises
        ------
        ConnectionError
            The dongle was disconnected.
        TimeoutError
            No report for ``stall_timeout`` seconds.
        """
        try:
            report = self._dev.read(ENDPOINT_IN, REPORT_BYTES, timeout=READ_TIMEOUT_MS)
            self.read_ns = time.monotonic_ns()
        except usb.core.USBTimeoutError:
            self._silence.check()
            return np.empty((0, len(self.get_channels())), np.float32), []
        except usb.core.USBError as exc:
            self._gone = usbdev.is_disconnect(exc)
            raise usbdev.usb_failure(NAME, "reading a report", exc) from exc
        self._silence.heard()
        if len(report) != REPORT_BYTES:
            log.warning("%s: ignored a report of %d bytes", NAME, len(report))
            return np.empty((0, len(self.get_channels())), np.float32), []
        return self.parse(self._cipher.decrypt(report.tobytes()))[None, :], []

    def parse(self, plain: bytes) -> np.ndarray:
        """One sample (all channels) from a decrypted report; updates battery and quality."""
        bits = int.from_bytes(plain, "big")

        def field(start, width=14):
            return (bits >> (8 * REPORT_BYTES - start - width)) & ((1 << width) - 1)

        counter = plain[0]
        if counter & 0x80:
            self._battery = battery_percent(counter)
            counter = 128
        elif counter % 64 < len(EEG):  # counters 0-13 and 64-77 carry F3 .. F4's quality
            self._quality[counter % 64] = field(QUALITY_BIT)
        eeg = [field(start) for start in EEG_BITS]
        gyro = [plain[i] for i in GYRO_BYTES]
        return np.array(eeg + [counter, self._battery] + gyro + self._quality, np.float32)

    def get_channels(self):
        return list(EEG) + ["COUNTER", "BATTERY", "GYRO_X", "GYRO_Y"] + [f"CQ_{c}" for c in EEG]

    def get_sampling_frequency(self):
        return FS
