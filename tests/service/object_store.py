"""Object stores without a network: fsspec's in-memory file system registered under the s3, gs
and hf protocols, so that ``s3://``, ``gs://`` and ``hf://`` URIs take the real fsspec code paths."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec
from fsspec.implementations.memory import MemoryFileSystem

PROTOCOLS = ("s3", "gs", "hf")


@contextmanager
def memory_object_stores() -> Iterator[MemoryFileSystem]:
    """Serve s3:// and gs:// from memory in this process; restore fsspec's registry after."""
    # fsspec has no public way to unregister a protocol; its registry module holds the dict.
    registry = importlib.import_module("fsspec.registry")._registry
    saved = {p: registry.get(p) for p in PROTOCOLS}
    for p in PROTOCOLS:
        fsspec.register_implementation(p, MemoryFileSystem, clobber=True)
    try:
        yield MemoryFileSystem()
    finally:
        for p, cls in saved.items():
            if cls is None:
                registry.pop(p, None)
            else:
                registry[p] = cls
        # The memory store is process-wide: drop what this test put there.
        ours = tuple(f"{p}://" for p in PROTOCOLS)
        for key in [k for k in MemoryFileSystem.store if k.startswith(ours)]:
            del MemoryFileSystem.store[key]
        MemoryFileSystem.pseudo_dirs[:] = [
            d for d in MemoryFileSystem.pseudo_dirs if not d.startswith(ours)
        ]
