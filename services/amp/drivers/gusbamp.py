"""GUSBamp: the g.tec g.USBamp amplifier (16 EEG channels + 1) over pyusb.

Protocol, as libmushu's driver reproduced it from a USB capture of g.tec's
software: every setting is a vendor control request on endpoint 0
(``bmRequestType`` 0x40, host to device); samples arrive on bulk IN
endpoint 0x86 as frames of 17 little-endian float32 values (68 bytes),
16 channels and the trigger input. The driver reads whole frames, about
10 ms of them per read, and keeps a frame split across two reads for the
next one (libmushu read 2028 bytes, not a whole number of frames, and
dropped what did not fit).

Install with ``pip install mushu[usb]``; non-root access needs the udev
rules in ``services/amp/udev/60-mushu.rules``.
"""

from __future__ import annotations

import time

import numpy as np
import usb.core

from . import gtec_filters, usbdev
from .base import Amplifier

NAME = "g.USBamp"
DEVICE_IDS = ((0x153C, 0x0001), (0x15C3, 0x0001))  # both vendor ids occur on g.USBamps
ENDPOINT_IN = 0x86
VENDOR_OUT = 0x40  # bmRequestType: vendor request, host to device, device recipient

N_VALUES = 17  # 16 channels + trigger
FRAME_BYTES = 4 * N_VALUES
SUPPORTED_FS = (32, 64, 128, 256, 512, 600, 1200, 2400, 4800, 9600, 19200, 38400)
READ_SECONDS = 0.010

# Vendor requests (bRequest codes).
SET_FS = 0xB6           # wValue: sampling frequency in Hz
SET_BUFFER = 0xB5       # wValue 0x80 while initialising, 0x08 just before starting
SET_CHANNELS = 0xB9     # data: the channels to acquire, one byte each (1..16)
SET_SLAVE = 0xCD        # wValue 1: slave, 0: master
INIT_D3 = 0xD3          # wValue 1 while initialising (captured, meaning undocumented)
INIT_CA = 0xCA          # wValue 1 while initialising (captured, meaning undocumented)
SET_BIPOLAR = 0xC8      # wValue 1, data: 16 bytes, all zero while initialising
SET_REFERENCE = 0xBF    # wValue: bit i connects group A+i to the common reference
SET_GROUND = 0xBE       # wValue: bit i connects group A+i to the common ground
SET_CAL_SIGNAL = 0xCB   # data: signal shape, then CAL_PARAMETERS
SET_BANDPASS = 0xC6     # wValue: channel 1..16, data: 144-byte filter message
SET_NOTCH = 0xC7        # likewise
SET_MODE = 0xC2         # wValue: mode code, after the mode's own request
START = 0xF7
STOP = 0xB8

#: mode -> (the mode's own request, its code for SET_MODE)
MODES = {"data": (0xC0, 1), "calibrate": (0xC1, 2), "impedance": (0xC9, 3)}
#: calibration signal shape -> first byte of the SET_CAL_SIGNAL data
CAL_SIGNALS = {"square": 1, "sawtooth": 2, "sine": 3, "whitenoise": 5}
#: rest of the SET_CAL_SIGNAL data: amplitude 2000 (little-endian 0x07d0), then as captured
CAL_PARAMETERS = bytes((0xD0, 0x07, 0x02, 0x00, 0xFF, 0x07))

#: libmushu divided data-mode samples by this; impedance used a divider with this voltage.
DATA_SCALE = 8.15
IMPEDANCE_APPLIED = 1e4

DEFAULTS = {"fs": 128, "mode": "data", "bandpass": None, "notch": None,
            "common_ground": (False,) * 4, "common_reference": (False,) * 4, "calibration_signal": "sine"}


class GUSBamp(Amplifier):
    """The g.tec g.USBamp.

    Selecting the driver opens the first g.USBamp found and initialises it
    (data mode, 128 Hz, no filters), as libmushu did. After the amplifier
    was disconnected, ``configure()`` and ``start()`` look for it again and
    re-initialise it.

    Channels are ``Ch1`` .. ``Ch16`` and ``Trigger``, the 17th value of each
    frame (passed through unconverted). In ``data`` mode the 16 channels
    are the device's values divided by 8.15, libmushu's conversion; in
    ``impedance`` mode they are libmushu's impedance estimate in Ohm; in
    ``calibrate`` mode the device's values unconverted.

    Parameters
    ----------
    backend : usb.backend.IBackend, optional
        pyusb backend; default: ``$MUSHU_USB_BACKEND``'s, else pyusb's own.
    stall_timeout : float
        Seconds without data after which a started amplifier is an error.
    """

    presets = [
        ["Data at 128Hz, no filters (libmushu's setup)", {"fs": 128}],
        ["EEG at 256Hz, 0.1-100Hz band-pass, 50Hz notch",
         {"fs": 256, "bandpass": [0.1, 100, 8], "notch": [48, 52, 4]}],
        ["EEG at 512Hz, 0.1-100Hz band-pass, 60Hz notch",
         {"fs": 512, "bandpass": [0.1, 100, 8], "notch": [58, 62, 4]}],
        ["Impedance check", {"mode": "impedance"}],
    ]

    def __init__(self, backend=None, stall_timeout: float = 2.0):
        self._backend = backend
        self._silence = usbdev.Silence(NAME, stall_timeout, "is the amplifier switched on and connected?")
        self._settings = dict(DEFAULTS)
        self._rest = b""
        self.unit = "uV"
        self._open()

    def _open(self):
        """Find the amplifier, claim it and initialise it with the current settings."""
        dev = usbdev.require_device(DEVICE_IDS, self._backend, NAME)
        self._dev, self._gone = dev, False
        try:
            dev.set_configuration()
        except usb.core.USBError as exc:
            raise self._failure("setting the configuration", exc) from exc
        usbdev.claim(dev, [0], NAME)
        self._apply(self._settings, initialise=True)

    @staticmethod
    def is_available():
        return usbdev.find_device(DEVICE_IDS) is not None

    # -- settings ---------------------------------------------------------

    def configure(self, fs=128, mode="data", bandpass=None, notch=None, common_ground=False,
                  common_reference=False, calibration_signal="sine", latency_ms=0.0):
        """Set sampling frequency, mode, filters and the ground/reference switches.

        Parameters
        ----------
        fs : int
            Sampling frequency in Hz, one of :data:`SUPPORTED_FS`.
        mode : {"data", "impedance", "calibrate"}
        bandpass, notch : sequence or None
            ``(hp, lp, order)`` or ``(hp, lp, fs, order)``, applied to all 16
            channels; None for no filter. ``gtec_filters.choices(fs)`` lists
            the combinations offered at each sampling frequency.
        common_ground, common_reference : bool or sequence of 4 bool
            Connect electrode groups A-D to the common ground / reference;
            one bool sets all four.
        calibration_signal : {"sine", "square", "sawtooth", "whitenoise"}
            The signal applied in ``calibrate`` mode.
        latency_ms : float
            The amplifier's least delay from acquiring a sample to delivering
            it, if measured (0 to 1000 ms): subtracted from the sample times
            (:func:`usbdev.latency_ns`).

        Raises
        ------
        ValueError, TypeError
            A setting the amplifier cannot do; nothing is sent to it then.
        """
        settings = {"fs": _check_fs(fs), "mode": _check_choice("mode", mode, MODES),
                    "common_ground": _check_groups("common_ground", common_ground),
                    "common_reference": _check_groups("common_reference", common_reference),
                    "calibration_signal": _check_choice("calibration_signal", calibration_signal, CAL_SIGNALS)}
        settings["bandpass"] = _check_filter("bandpass", bandpass, settings["fs"])
        settings["notch"] = _check_filter("notch", notch, settings["fs"])
        latency = usbdev.latency_ns(latency_ms)
        if self._gone:
            self._open()
        self._apply(settings)
        self._settings = settings
        self.latency_ns = latency

    def _apply(self, s, initialise=False):
        select, code = MODES[s["mode"]]
        self._request(select)
        self._request(SET_MODE, code)
        if initialise:  # the rest of the captured initialisation
            self._request(SET_FS, 0x80)
            self._request(SET_BUFFER, 0x80)
            self._request(SET_CHANNELS, data=bytes(range(1, 17)))
            self._request(SET_SLAVE, 0)
            self._request(INIT_D3, 1)
            self._request(INIT_CA, 1)
            self._request(SET_BIPOLAR, 1, bytes(16))
        self._request(SET_REFERENCE, _group_bits(s["common_reference"]))
        self._request(SET_GROUND, _group_bits(s["common_ground"]))
        self._request(SET_CAL_SIGNAL, data=bytes([CAL_SIGNALS[s["calibration_signal"]]]) + CAL_PARAMETERS)
        for request, kind in ((SET_BANDPASS, "bandpass"), (SET_NOTCH, "notch")):
            spec = s[kind]
            blob = gtec_filters.NULL_FILTER if spec is None else gtec_filters.message(kind, *spec)
            for channel in range(1, 17):
                self._request(request, channel, blob)
        self._request(SET_FS, s["fs"])
        self.unit = "Ohm" if s["mode"] == "impedance" else "uV"

    def _request(self, request, value=0, data=None):
        try:
            self._dev.ctrl_transfer(VENDOR_OUT, request, value, 0, data)
        except usb.core.USBError as exc:
            raise self._failure(f"control request 0x{request:02x}", exc) from exc

    def _failure(self, action, exc):
        self._gone = self._gone or usbdev.is_disconnect(exc)
        return usbdev.usb_failure(NAME, action, exc)

    # -- acquisition ------------------------------------------------------

    def start(self):
        if self._gone:
            self._open()
        self._rest = b""
        self._request(SET_BUFFER, 0x08)
        self._request(START)
        self._silence.heard()

    def stop(self):
        if not self._gone:  # nothing to stop on a vanished device
            self._request(STOP)

    def get_data(self):
        """Read about 10 ms of frames; return them converted for the mode.

        Raises
        ------
        ConnectionError
            The amplifier was disconnected.
        TimeoutError
            The amplifier sent nothing for ``stall_timeout`` seconds.
        """
        fs = self._settings["fs"]
        frames = max(1, round(fs * READ_SECONDS))
        try:
            chunk = self._dev.read(ENDPOINT_IN, frames * FRAME_BYTES, timeout=int(1000 * frames / fs) + 100)
            self.read_ns = time.monotonic_ns()
        except usb.core.USBTimeoutError:
            self._silence.check()
            return np.empty((0, N_VALUES), np.float32), []
        except usb.core.USBError as exc:
            raise self._failure("reading samples", exc) from exc
        self._silence.heard()
        buf = self._rest + chunk.tobytes()
        whole = len(buf) - len(buf) % FRAME_BYTES
        self._rest = buf[whole:]
        values = np.frombuffer(buf, "<f4", whole // 4).reshape(-1, N_VALUES).astype(np.float32)
        return self._convert(values), []

    def _convert(self, values):
        mode, eeg = self._settings["mode"], values[:, :16]
        if mode == "data":
            eeg /= np.float32(DATA_SCALE)
        elif mode == "impedance":
            eeg[:] = eeg * 1e6 / (IMPEDANCE_APPLIED - eeg) - IMPEDANCE_APPLIED
        return values

    def get_channels(self):
        return [f"Ch{i}" for i in range(1, 17)] + ["Trigger"]

    def get_sampling_frequency(self):
        return self._settings["fs"]


def _check_fs(fs):
    if isinstance(fs, bool) or not isinstance(fs, (int, float)) or fs not in SUPPORTED_FS:
        raise ValueError(f"the g.USBamp cannot sample at {fs!r} Hz; supported: "
                         f"{', '.join(map(str, SUPPORTED_FS))} Hz")
    return int(fs)


def _check_choice(name, value, valid):
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}, not {value!r}")
    return value


def _check_groups(name, value):
    if isinstance(value, bool):
        return (value,) * 4
    if (isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, bool) for v in value)):
        return tuple(value)
    raise TypeError(f"{name} must be a bool or 4 bools (groups A, B, C, D), not {value!r}")


def _group_bits(groups):
    return sum(1 << i for i, on in enumerate(groups) if on)


def _check_filter(kind, spec, fs):
    """``spec`` as the key ``(hp, lp, fs, order)`` of a filter offered at ``fs``, or None."""
    if spec is None:
        return None
    if (not isinstance(spec, (list, tuple)) or len(spec) not in (3, 4)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec)):
        raise TypeError(f"{kind} must be None, (hp, lp, order) or (hp, lp, fs, order), not {spec!r}")
    hp, lp, *rest, order = spec
    if rest and rest[0] != fs:
        raise ValueError(f"{kind} {tuple(spec)!r} is for {rest[0]} Hz but fs is {fs} Hz")
    offered = gtec_filters.choices(fs)[kind]
    if (hp, lp, order) in offered:
        hp, lp, order = offered[offered.index((hp, lp, order))]  # the table's own numbers (8, not 8.0)
    else:
        listing = "; ".join(f"order {o}: " + " ".join(f"{h}-{l}" for h, l, oo in offered if oo == o)
                            for o in dict.fromkeys(o for _h, _l, o in offered)) or "none"
        raise ValueError(f"the g.USBamp has no {kind} filter {hp}-{lp} Hz of order {order} at {fs} Hz; "
                         f"offered at {fs} Hz (hp-lp Hz): {listing}")
    return (hp, lp, fs, order)
