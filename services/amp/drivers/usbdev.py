"""pyusb plumbing shared by the hardware drivers (gusbamp, epoc).

Choosing the backend
--------------------
A driver finds its device with ``usb.core.find(..., backend=...)``. The
backend is, in this order: the one passed to the driver's constructor
(``GUSBamp(backend=...)``), the one named by the environment variable
``MUSHU_USB_BACKEND``, or pyusb's default (libusb-1.0).

``MUSHU_USB_BACKEND=module:callable`` is a testing and diagnostics hook: the
callable is imported and called once per process (the result is cached) and
must return a ``usb.backend.IBackend``. The test suite uses it to run the
real amp service against emulated devices (``tests/usb_fakes.py``).
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import time

import usb.core
import usb.util

ENV_BACKEND = "MUSHU_USB_BACKEND"

#: libusb's LIBUSB_ERROR_NO_DEVICE, which pyusb keeps as backend_error_code.
_LIBUSB_NO_DEVICE = -4


@functools.lru_cache(maxsize=None)
def _backend_from_spec(spec: str):
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"{ENV_BACKEND}={spec!r} is not module:callable")
    return getattr(importlib.import_module(module), name)()


def resolve_backend(backend=None):
    """The backend to use: ``backend`` itself, else ``$MUSHU_USB_BACKEND``'s, else None (pyusb's default)."""
    if backend is not None:
        return backend
    spec = os.environ.get(ENV_BACKEND, "").strip()
    return _backend_from_spec(spec) if spec else None


def find_device(ids, backend=None):
    """The first device whose ``(idVendor, idProduct)`` is in ``ids``, or None.

    Raises
    ------
    RuntimeError
        pyusb has no backend (libusb-1.0 is not installed).
    """
    backend = resolve_backend(backend)
    try:
        for vendor, product in ids:
            dev = usb.core.find(idVendor=vendor, idProduct=product, backend=backend)
            if dev is not None:
                return dev
    except usb.core.NoBackendError:
        raise RuntimeError("pyusb found no USB backend: install libusb-1.0 "
                           "(Debian/Ubuntu: apt install libusb-1.0-0)") from None
    return None


def require_device(ids, backend, what: str):
    """:func:`find_device`, raising ``RuntimeError`` naming ``what`` and its ids if there is none."""
    dev = find_device(ids, backend)
    if dev is None:
        listed = " or ".join(f"{vendor:04x}:{product:04x}" for vendor, product in ids)
        raise RuntimeError(f"no {what} found (USB id {listed}); is it plugged in?")
    return dev


def claim(dev, interfaces, name: str):
    """Detach kernel drivers from ``interfaces`` of ``dev`` and claim them."""
    try:
        for intf in interfaces:
            try:
                if dev.is_kernel_driver_active(intf):
                    dev.detach_kernel_driver(intf)
            except NotImplementedError:  # backends without kernel drivers (not Linux)
                pass
            usb.util.claim_interface(dev, intf)
    except usb.core.USBError as exc:
        raise usb_failure(name, f"claiming interface {intf}", exc) from exc


def latency_ns(latency_ms) -> int:
    """A declared device latency (``configure(latency_ms=...)``) in ns, checked.

    The least delay from acquiring a sample to the delivery of the transfer
    that carries it, if the lab has measured it (a photodiode or a trigger
    loop back into the amplifier): the amp service subtracts it from the
    sample times it fits.
    """
    if isinstance(latency_ms, bool) or not isinstance(latency_ms, (int, float)) or not 0 <= latency_ms <= 1000:
        raise ValueError(f"latency_ms must be the device's least delivery delay in ms, 0 to 1000, "
                         f"not {latency_ms!r}")
    return round(latency_ms * 1e6)


def is_disconnect(exc: usb.core.USBError) -> bool:
    """True if ``exc`` says the device is gone (ENODEV / LIBUSB_ERROR_NO_DEVICE)."""
    return exc.errno == errno.ENODEV or getattr(exc, "backend_error_code", None) == _LIBUSB_NO_DEVICE


def usb_failure(name: str, action: str, exc: usb.core.USBError) -> OSError:
    """An exception whose message says what failed on device ``name`` and what to do."""
    if is_disconnect(exc):
        return ConnectionError(f"{name} disconnected: {action} failed ({exc}); reconnect it and start again")
    if exc.errno == errno.EACCES:
        return PermissionError(f"{name}: {action} failed ({exc}); non-root access needs the udev rules "
                               "in services/amp/udev/60-mushu.rules (see docs/drivers.md, Hardware)")
    return OSError(f"{name}: {action} failed: {exc}")


class Silence:
    """Watch a started device: raise when it has sent nothing for ``limit_s`` seconds.

    Parameters
    ----------
    name : str
        Device name for the message.
    limit_s : float
        Longest silence tolerated.
    hint : str
        What the user should check, appended to the message.
    """

    def __init__(self, name: str, limit_s: float, hint: str):
        self.name, self.limit_s, self.hint = name, limit_s, hint
        self.heard()

    def heard(self):
        """The device just sent data."""
        self._last = time.monotonic()

    def check(self):
        """Raise ``TimeoutError`` if the device has been silent too long."""
        silent = time.monotonic() - self._last
        if silent > self.limit_s:
            raise TimeoutError(f"{self.name} sent no data for {silent:.1f} s; {self.hint}")
