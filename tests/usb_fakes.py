"""Fake pyusb backends: a g.USBamp and an Emotiv EPOC emulated at the USB transfer level.

:class:`FakeBackend` implements ``usb.backend.IBackend`` over emulated
devices, so the real drivers run unchanged through pyusb. The emulators
behave like devices, not like mocks of the driver:

- they answer descriptor and string requests, keep a configuration, and
  insist on claimed interfaces (and detached kernel drivers) before I/O;
- a request they do not know, or with a bad value or payload, is refused
  with a pipe error (a stall) and recorded in ``refused``; accepted control
  requests are recorded in ``requests`` as ``(bRequest, wValue, data)``;
- they stream by their own clock, which runs ``ppm`` fast against the
  host's: a transfer is ready ``latency_s`` (a range, drawn per transfer)
  after its last sample was acquired, a read waits until then and raises
  ``usb.core.USBTimeoutError`` when the timeout passes first; ``truth``
  (a path) receives the true acquisition times as JSON (``t0_ns``,
  ``period_ns``: sample ``k`` at ``t0_ns + k * period_ns``);
- ``unplug()`` (or ``unplug_after`` seconds after the host's first read) makes every later
  call, including a read already waiting, raise ``usb.core.USBError`` with
  errno ENODEV, as libusb does for a vanished device; ``stall_after``
  seconds stops the data without unplugging.

For the amp service as a process, ``MUSHU_USB_BACKEND=usb_fakes:<factory>``
selects one of the factory functions at the end of this module.
"""

from __future__ import annotations

import array
import errno
import json
import math
import os
import random
import struct
import threading
import time
from types import SimpleNamespace

import numpy as np
import usb.backend
import usb.core
from Crypto.Cipher import AES

BULK, INTERRUPT = 2, 3


def pipe_error():
    return usb.core.USBError("Pipe error", error_code=-9, errno=errno.EPIPE)


def no_device():
    return usb.core.USBError("No such device (it may have been disconnected)", error_code=-4, errno=errno.ENODEV)


def timed_out():
    return usb.core.USBTimeoutError("Operation timed out", error_code=-7, errno=errno.ETIMEDOUT)


def busy():
    return usb.core.USBError("Resource busy", error_code=-6, errno=errno.EBUSY)


def _endpoint(address, kind, packet):
    return SimpleNamespace(bLength=7, bDescriptorType=5, bEndpointAddress=address, bmAttributes=kind,
                           wMaxPacketSize=packet, bInterval=1 if kind == INTERRUPT else 0, bRefresh=0,
                           bSynchAddress=0, extra_descriptors=[])


def _interface(number, endpoints, cls=0xFF, string=0):
    return SimpleNamespace(bLength=9, bDescriptorType=4, bInterfaceNumber=number, bAlternateSetting=0,
                           bNumEndpoints=len(endpoints), bInterfaceClass=cls, bInterfaceSubClass=0,
                           bInterfaceProtocol=0, iInterface=string, extra_descriptors=[], endpoints=endpoints)


def _configuration(interfaces):
    return SimpleNamespace(bLength=9, bDescriptorType=2, wTotalLength=9 + 9 * len(interfaces),
                           bNumInterfaces=len(interfaces), bConfigurationValue=1, iConfiguration=0,
                           bmAttributes=0x80, bMaxPower=50, extra_descriptors=[],
                           interfaces=[[intf] for intf in interfaces])


class FakeDevice:
    """A USB device as :class:`FakeBackend` sees it; subclasses add requests and data.

    Parameters
    ----------
    unplug_after : float, optional
        Seconds after the host's first read at which the device vanishes.
    stall_after : float, optional
        Seconds after streaming starts at which the device falls silent.
    ppm : float
        How much faster than its nominal rate the device's clock runs.
    latency_s : (float, float)
        Range of the delay from a transfer's last sample to its delivery.
    truth : str, optional
        Where to write the true sample times when streaming starts.
    """

    vendor = product = 0
    strings: dict = {}
    interfaces: list = []
    kernel_interfaces: tuple = ()  # held by a kernel driver when plugged in

    def __init__(self, unplug_after=None, stall_after=None, address=2, ppm=0.0, latency_s=(0.0, 0.0),
                 truth=None, seed=0):
        self.descriptor = SimpleNamespace(
            bLength=18, bDescriptorType=1, bcdUSB=0x0200, bDeviceClass=0, bDeviceSubClass=0, bDeviceProtocol=0,
            bMaxPacketSize0=64, idVendor=self.vendor, idProduct=self.product, bcdDevice=0x0100,
            iManufacturer=1, iProduct=2, iSerialNumber=3, bNumConfigurations=1, address=address, bus=1,
            port_number=1, port_numbers=(1,), speed=3)
        self.configurations = [_configuration(self.interfaces)]
        self.cond = threading.Condition()
        self.plugged = True
        self.configuration = 1
        self.claimed: set[int] = set()
        self.kernel = set(self.kernel_interfaces)
        self.requests: list[tuple] = []
        self.refused: list[tuple] = []
        self.unplug_after, self.stall_after = unplug_after, stall_after
        self.t0 = None  # when streaming started
        self.first_read = None  # when the host first read data
        self.ppm, self.latency_s, self.truth = ppm, latency_s, truth
        self._rng = random.Random(seed)
        self._latency = None  # of the transfer the host waits for

    # -- the device's clock -------------------------------------------------------

    def start_clock(self):
        self.t0_ns = time.monotonic_ns()
        self.t0 = self.t0_ns / 1e9
        if self.truth:
            with open(self.truth, "w") as f:
                json.dump({"t0_ns": self.t0_ns, "period_ns": 1e9 / self.true_fs}, f)

    @property
    def true_fs(self):
        return self.fs * (1 + self.ppm * 1e-6)

    def acquired(self, k):
        """When sample ``k`` since the start was acquired (host seconds)."""
        return self.t0 + k / self.true_fs

    def ready(self, last):
        """Seconds until a transfer whose last sample is ``last`` is delivered (0: it is)."""
        if self.acquired(last) >= self.silent_since():
            return 1.0
        if self._latency is None:
            self._latency = self._rng.uniform(*self.latency_s)
        return max(0.0, self.acquired(last) + self._latency - time.monotonic())

    def delivered(self):
        """The transfer waited for went out: the next one has a latency of its own."""
        self._latency = None

    # -- presence -----------------------------------------------------------

    def unplug(self):
        with self.cond:
            self.plugged = False
            self.cond.notify_all()

    def check_plugged(self):
        if self.plugged and time.monotonic() >= self.unplug_time():
            self.plugged = False
        if not self.plugged:
            raise no_device()

    def wait(self, attempt, timeout_ms):
        """Return ``attempt()``'s data once it has some; it returns ``(data or None, seconds to wait)``."""
        deadline = time.monotonic() + (timeout_ms / 1000 if timeout_ms else math.inf)
        with self.cond:
            while True:
                self.check_plugged()
                data, wait = attempt()
                if data is not None:
                    return data
                now = time.monotonic()
                if now >= deadline:
                    raise timed_out()
                self.cond.wait(min(wait, deadline - now, max(0.0, self.unplug_time() - now), 1.0))

    def unplug_time(self):
        """When the device will vanish by ``unplug_after``, or infinity."""
        if self.unplug_after is None or self.first_read is None:
            return math.inf
        return self.first_read + self.unplug_after

    def silent_since(self):
        """Time at which the data stops (``stall_after``), or infinity."""
        return math.inf if self.stall_after is None or self.t0 is None else self.t0 + self.stall_after

    # -- standard requests ----------------------------------------------------

    def refuse(self, *what):
        self.refused.append(what)
        raise pipe_error()

    def set_configuration(self, value):
        self.check_plugged()
        if self.claimed:
            raise busy()
        if value not in (0, 1):
            self.refuse("set_configuration", value)
        self.configuration = value

    def claim(self, intf):
        self.check_plugged()
        if intf in self.kernel:
            raise busy()
        if self.configuration != 1 or intf >= len(self.interfaces):
            raise usb.core.USBError("Entity not found", error_code=-5, errno=errno.ENOENT)
        self.claimed.add(intf)

    def control(self, request_type, request, value, index, data: bytes, length: int):
        """Answer a control transfer: the bytes read (IN) or None (OUT)."""
        self.check_plugged()
        if request_type == 0x80 and request == 6 and value >> 8 == 3:
            return self.string_descriptor(value & 0xFF, length)
        if request_type & 0x80 or (request_type & 0x60) != 0x40 or index != 0:
            self.refuse(request_type, request, value, index, data)
        if self.configuration != 1:
            self.refuse(request, value, data)
        self.vendor_request(request, value, data)
        self.requests.append((request, value, data))
        return None

    def string_descriptor(self, index, length):
        if index == 0:
            desc = bytes((4, 3, 0x09, 0x04))  # one language: English (US)
        elif index in self.strings:
            text = self.strings[index].encode("utf-16-le")
            desc = bytes((2 + len(text), 3)) + text
        else:
            self.refuse("string", index)
        return desc[:length]

    def vendor_request(self, request, value, data):
        self.refuse(request, value, data)

    def read(self, ep, size, timeout_ms) -> bytes:
        raise NotImplementedError


# -- g.USBamp ----------------------------------------------------------------

GUSBAMP_FS = (32, 64, 128, 256, 512, 600, 1200, 2400, 4800, 9600, 19200, 38400)
GUSBAMP_MODES = {0xC0: ("data", 1), 0xC1: ("calibrate", 2), 0xC9: ("impedance", 3)}
NULL_FILTER = (1.0,) + (0.0,) * 17


def gusbamp_values(k0, n):
    """The raw frames ``k0 .. k0+n-1`` the emulated g.USBamp sends: value (k*17 + c) mod 2**24, float32."""
    flat = np.arange(k0 * 17, (k0 + n) * 17, dtype=np.int64) % (1 << 24)
    return flat.astype(np.float32).reshape(n, 17)


def _setter(name, valid):
    """A request handler that stores ``wValue`` (no data) as attribute ``name`` if it is valid."""
    def handler(self, value, data):
        if data or value not in valid:
            return False
        setattr(self, name, value)
        return True
    return handler


def _filter_setter(table):
    """A request handler that stores one channel's 18 filter coefficients in ``table``."""
    def handler(self, value, data):
        if not 1 <= value <= 16 or len(data) != 144:
            return False
        coefficients = struct.unpack("<18d", data)
        if coefficients != NULL_FILTER and (coefficients[9] != 1.0 or not all(map(math.isfinite, coefficients))):
            return False  # neither the null filter nor a normalised (a[0] == 1) filter
        getattr(self, table)[value] = coefficients
        return True
    return handler


class GUSBampEmulator(FakeDevice):
    """A g.USBamp: vendor requests on endpoint 0, float32 frames on bulk endpoint 0x86.

    Settings are kept as attributes (``fs``, ``mode``, ``channels``,
    ``reference``, ``ground``, ``cal_signal``, ``bandpass`` and ``notch``: per
    channel the 18 coefficients received). Settings are refused while
    streaming; starting needs sampling rate, mode, channel list and the
    pre-start buffer request (0xb5 with 0x08). ``max_read`` caps the bytes one
    read returns, so frames straddle reads.
    """

    vendor, product = 0x153C, 0x0001
    strings = {1: "g.tec medical engineering GmbH", 2: "g.USBamp", 3: "UB-2009.07.01"}
    interfaces = [_interface(0, [_endpoint(0x86, BULK, 512)])]

    def __init__(self, vendor=0x153C, max_read=None, **kw):
        self.vendor = vendor
        super().__init__(**kw)
        self.max_read = max_read
        self.fs = self.mode = self.channels = self.reference = self.ground = self.cal_signal = None
        self.buffer = self.slave = self._selected = None
        self.bandpass, self.notch = {}, {}
        self.running = False
        self.sent = 0  # bytes delivered since start
        self.reads: list[int] = []  # the size of every read the host asked for

    def vendor_request(self, request, value, data):
        if self.running and request != 0xB8:
            self.refuse(request, value, data)
        handler = self.HANDLERS.get(request)
        if handler is None or not handler(self, value, data):
            self.refuse(request, value, data)

    def _select_mode(self, value, data):
        return value == 0 and not data

    def _mode(self, value, data):
        last = self.requests[-1][0] if self.requests else None
        if data or last not in GUSBAMP_MODES or GUSBAMP_MODES[last][1] != value:
            return False  # the code must follow its mode's own request
        self.mode = GUSBAMP_MODES[last][0]
        return True

    def _channels(self, value, data):
        if value != 0 or len(data) != 16 or not all(1 <= b <= 16 for b in data):
            return False
        self.channels = list(data)
        return True

    def _init_value(self, value, data):
        return value == 1 and not data

    def _bipolar(self, value, data):
        return value == 1 and len(data) == 16

    def _cal_signal(self, value, data):
        if value != 0 or len(data) != 7 or data[0] not in (1, 2, 3, 5):
            return False
        self.cal_signal = {1: "square", 2: "sawtooth", 3: "sine", 5: "whitenoise"}[data[0]]
        return True

    def _start(self, value, data):
        if value or data or None in (self.fs, self.mode, self.channels) or self.buffer != 0x08:
            return False
        self.running, self.sent = True, 0
        self.start_clock()
        return True

    def _stop(self, value, data):
        if value or data:
            return False
        self.running = False
        return True

    HANDLERS = {
        0xC0: _select_mode, 0xC1: _select_mode, 0xC9: _select_mode, 0xC2: _mode,
        0xB6: _setter("fs", GUSBAMP_FS), 0xB5: _setter("buffer", (0x80, 0x08)),
        0xCD: _setter("slave", (0, 1)), 0xBF: _setter("reference", range(16)),
        0xBE: _setter("ground", range(16)), 0xB9: _channels, 0xD3: _init_value, 0xCA: _init_value,
        0xC8: _bipolar, 0xCB: _cal_signal, 0xC6: _filter_setter("bandpass"), 0xC7: _filter_setter("notch"),
        0xF7: _start, 0xB8: _stop,
    }

    def read(self, ep, size, timeout_ms):
        self.reads.append(size)
        want = min(size, self.max_read or size)

        def attempt():
            if not self.running:
                return None, 1.0
            wait = self.ready(-(-(self.sent + want) // 68) - 1)  # the transfer's last frame
            if wait > 0:
                return None, wait
            self.delivered()
            return self._take(want), 0.0

        return self.wait(attempt, timeout_ms)

    def _take(self, n):
        k0, k1 = self.sent // 68, -(-(self.sent + n) // 68)
        blob = gusbamp_values(k0, k1 - k0).tobytes()
        start = self.sent - k0 * 68
        self.sent += n
        return blob[start:start + n]


# -- Emotiv EPOC -----------------------------------------------------------------

EPOC_SERIAL = "SN201211151227GM"
EPOC_BATTERY_BYTE = 0xF0  # 72 % in the driver's table


def epoc_key(serial, research=True):
    """The key, written out as the EPOC key patterns are usually listed."""
    a, b, c, d = serial[15], serial[14], serial[13], serial[12]
    if research:
        pattern = [a, "\0", b, "T", c, "\x10", d, "B", a, "\0", b, "H", c, "\0", d, "P"]
    else:
        pattern = [a, "\0", b, "H", c, "\0", d, "T", a, "\x10", b, "B", c, "\0", d, "P"]
    return "".join(pattern).encode("latin-1")


def epoc_fields(k):
    """What report ``k`` of the emulated headset carries (its plain-text fields)."""
    position = k % 129  # counters 0..127, then a battery report
    return {
        "first": EPOC_BATTERY_BYTE if position == 128 else position,
        "eeg": [(k + 1000 * i) % 16384 for i in range(14)],
        "quality": (3 * k + 5) % 16384,
        "gyro": (k % 256, (255 - k) % 256),
    }


def epoc_plain(k) -> bytes:
    """Report ``k`` before encryption, laid out as the EPOC does."""
    f = epoc_fields(k)
    value = f["first"] << 248
    for i, level in enumerate(f["eeg"]):
        start = 8 + 14 * i if i < 7 else 134 + 14 * (i - 7)
        value |= level << (256 - start - 14)
    value |= f["quality"] << (256 - 106 - 14)
    value |= 0x2AAA << (256 - 120 - 14)  # unused bits, set so that a misparse shows
    plain = bytearray(value.to_bytes(32, "big"))
    plain[29], plain[30], plain[31] = *f["gyro"], 0x5A
    return bytes(plain)


class EpocEmulator(FakeDevice):
    """An EPOC dongle: encrypted 32-byte reports on interrupt endpoint 0x82, about 128 per second.

    Both HID interfaces start held by the kernel's driver. Reports start when
    interface 1 is claimed; like a device with a small buffer, only the
    newest ``queue`` reports wait for the host (``dropped`` counts the rest).
    """

    vendor, product = 0x1234, 0xED02
    interfaces = [_interface(0, [_endpoint(0x81, INTERRUPT, 32)], cls=3),
                  _interface(1, [_endpoint(0x82, INTERRUPT, 32)], cls=3, string=4)]
    kernel_interfaces = (0, 1)

    def __init__(self, serial=EPOC_SERIAL, research=True, queue=32, fs=128.0, **kw):
        self.strings = {1: "Emotiv Systems Pty Ltd", 2: "Brain Waves", 3: serial, 4: "Emotiv RAW DATA"}
        super().__init__(**kw)
        self.cipher = AES.new(epoc_key(serial, research), AES.MODE_ECB)
        self.queue, self.fs = queue, fs
        self.next = 0
        self.dropped = 0

    def claim(self, intf):
        super().claim(intf)
        if intf == 1 and self.t0 is None:
            self.start_clock()

    def read(self, ep, size, timeout_ms):
        if size < 32:
            raise usb.core.USBError("Overflow", error_code=-8, errno=errno.EOVERFLOW)

        def attempt():
            if ep != 0x82:
                return None, 1.0  # the other interface never reports
            now = min(time.monotonic(), self.silent_since())
            due = int((now - self.t0) * self.true_fs) + 1  # reports acquired by now
            if due - self.next > self.queue:
                self.dropped += due - self.next - self.queue
                self.next = due - self.queue
            wait = self.ready(self.next)
            if wait > 0:
                return None, wait
            self.delivered()
            self.next += 1
            return self.cipher.encrypt(epoc_plain(self.next - 1)), 0.0

        return self.wait(attempt, timeout_ms)


# -- the backend -----------------------------------------------------------------


class FakeBackend(usb.backend.IBackend):
    """A pyusb backend whose bus holds the given emulated devices."""

    def __init__(self, *devices):
        super().__init__()
        self.devices = list(devices)

    def enumerate_devices(self):
        present = []
        for dev in self.devices:
            try:
                dev.check_plugged()
                present.append(dev)
            except usb.core.USBError:
                pass
        return present

    def get_device_descriptor(self, dev):
        return dev.descriptor

    def get_configuration_descriptor(self, dev, config):
        return dev.configurations[config]

    def get_interface_descriptor(self, dev, intf, alt, config):
        return dev.configurations[config].interfaces[intf][alt]

    def get_endpoint_descriptor(self, dev, ep, intf, alt, config):
        return dev.configurations[config].interfaces[intf][alt].endpoints[ep]

    def open_device(self, dev):
        dev.check_plugged()
        return dev  # the handle is the device itself

    def close_device(self, handle):
        pass

    def set_configuration(self, handle, config_value):
        handle.set_configuration(config_value)

    def get_configuration(self, handle):
        handle.check_plugged()
        return handle.configuration

    def set_interface_altsetting(self, handle, intf, altsetting):
        handle.check_plugged()
        if altsetting != 0:
            handle.refuse("altsetting", intf, altsetting)

    def claim_interface(self, handle, intf):
        handle.claim(intf)

    def release_interface(self, handle, intf):
        handle.claimed.discard(intf)

    def ctrl_transfer(self, handle, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        reply = handle.control(bmRequestType, bRequest, wValue, wIndex,
                               b"" if bmRequestType & 0x80 else data.tobytes(), len(data))
        if reply is None:
            return len(data)
        data[:len(reply)] = array.array("B", reply)
        return len(reply)

    def _read(self, handle, ep, intf, buff, timeout, kind):
        handle.check_plugged()
        endpoints = handle.interfaces[intf].endpoints if intf < len(handle.interfaces) else []
        if intf not in handle.claimed or not any(e.bEndpointAddress == ep and e.bmAttributes == kind
                                                 for e in endpoints):
            handle.refuse("read", ep, intf)
        if handle.first_read is None:
            handle.first_read = time.monotonic()
        data = handle.read(ep, len(buff), timeout)
        buff[:len(data)] = array.array("B", data)
        return len(data)

    def bulk_read(self, handle, ep, intf, buff, timeout):
        return self._read(handle, ep, intf, buff, timeout, BULK)

    def intr_read(self, handle, ep, intf, buff, timeout):
        return self._read(handle, ep, intf, buff, timeout, INTERRUPT)

    def clear_halt(self, handle, ep):
        handle.check_plugged()

    def reset_device(self, handle):
        handle.check_plugged()

    def is_kernel_driver_active(self, handle, intf):
        handle.check_plugged()
        return intf in handle.kernel

    def detach_kernel_driver(self, handle, intf):
        handle.check_plugged()
        handle.kernel.discard(intf)

    def attach_kernel_driver(self, handle, intf):
        handle.check_plugged()
        handle.kernel.add(intf)


# -- factories for MUSHU_USB_BACKEND=usb_fakes:<name> ------------------------------

def no_device_backend():
    return FakeBackend()


def gusbamp_backend():
    return FakeBackend(GUSBampEmulator(max_read=300))  # 4 frames and a bit: frames straddle reads


def gusbamp_late_backend():
    """A g.USBamp 100 ppm fast whose transfers arrive 2-4 ms late; its truth in ``MUSHU_TEST_USB_TRUTH``."""
    return FakeBackend(GUSBampEmulator(ppm=100.0, latency_s=(0.002, 0.004), truth=os.environ["MUSHU_TEST_USB_TRUTH"]))


def epoc_late_backend():
    """An EPOC 100 ppm fast whose reports arrive 2-4 ms late; its truth in ``MUSHU_TEST_USB_TRUTH``."""
    return FakeBackend(EpocEmulator(ppm=100.0, latency_s=(0.002, 0.004), truth=os.environ["MUSHU_TEST_USB_TRUTH"]))


def gusbamp_vanishing_backend():
    return FakeBackend(GUSBampEmulator(unplug_after=0.5))


def epoc_backend():
    return FakeBackend(EpocEmulator())


def epoc_vanishing_backend():
    return FakeBackend(EpocEmulator(unplug_after=0.5))
