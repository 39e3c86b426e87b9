"""Where the engine's host caches come from: glibc's malloc, told to map large blocks itself.

A key/value cache is megabytes per tensor, and the engine replaces its caches as sentences come
and go (a new layout is a new array). glibc serves a block above its mmap threshold with a
mapping of its own, which returns to the OS when freed; but each time such a block is freed it
raises the threshold (up to 32 MB), after which caches come from its heap, and their memory
stays with the process long after they are gone. Fixed at 1 MB, the threshold keeps every cache
a mapping of its own (measured under 32 simulated clients: 406 -> 254 MB resident after the
load, peak 613 -> 530 MB, the same speed; docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger("rosetta.allocator")

M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
MMAP_THRESHOLD = 1 << 20


@functools.cache
def map_large_blocks() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD, once per process; False where the C library
    has no mallopt (not glibc), which changes nothing but memory use."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt in this C library: freed caches stay with malloc")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
