"""glibc malloc settings for services that run for weeks, and handing freed memory back to the system.

An amp service allocates its blocks on the acquisition thread, keeps them
in its history and frees them on another thread; libzmq's I/O threads
allocate too. With glibc's defaults an arena per thread (up to 8 per core)
keeps what was freed into it, and a history of 100 kHz blocks, once
dropped, leaves its pages in the heap: a service's RSS rose in steps of 15
to 40 MiB over some minutes of sessions at changing rates and stayed there
(bench/soak.py).

:func:`tune_malloc` (at a service's start, before its threads) limits the
arenas to two; :func:`release_freed_memory` (when a history is dropped)
gives free heap pages back. glibc's mapping threshold is left to adapt: fixed
at 128 KiB, every large block became a fresh mapping, and a recorder
catching up from the amp's history after a restart fell behind. Both do nothing where the C library is not glibc. Python has
no API for either, so they call glibc through ctypes.
"""

from __future__ import annotations

import sys

#: mallopt parameter (glibc's malloc.h).
M_ARENA_MAX = -8
ARENAS = 2

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes
                libc = ctypes.CDLL(None)
                if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "malloc_trim"):
                    _libc = libc
            except OSError:
                pass
    return _libc


def tune_malloc() -> bool:
    """Two malloc arenas for this process's threads; False if not glibc."""
    libc = _glibc()
    return bool(libc.mallopt(M_ARENA_MAX, ARENAS)) if libc else False


def release_freed_memory() -> bool:
    """Give the system the heap's free pages (glibc ``malloc_trim``); True if any were given back."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc else False
