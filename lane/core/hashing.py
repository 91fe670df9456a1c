"""The sticky-percentage hash, specified bit for bit.

The Istio emitter reproduces this in Lua (mesh_config/lua), so the definition is deliberately
small and exact: FNV-1a, 32 bits, over the UTF-8 bytes of ``salt + key``; the bucket is
``hash % 100``; a request is in the rule's share when ``bucket < percent``.

    offset basis 0x811C9DC5, prime 0x01000193, for each byte: h = ((h ^ byte) * prime) mod 2**32
"""

from __future__ import annotations

from typing import Final

__all__ = ["FNV_OFFSET_BASIS", "FNV_PRIME", "bucket_of", "fnv1a_32", "in_percentage"]

FNV_OFFSET_BASIS: Final = 0x811C9DC5
FNV_PRIME: Final = 0x01000193
BUCKETS: Final = 100


def fnv1a_32(data: bytes) -> int:
    """32-bit FNV-1a of *data*."""
    h = FNV_OFFSET_BASIS
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return h


def bucket_of(key: str, salt: str = "") -> int:
    """The bucket 0..99 that *key* always falls into for a rule salted with *salt*.

    Header values that were not valid UTF-8 reach us decoded with ``surrogateescape``; encoding
    them back the same way hashes the bytes that were on the wire, as Envoy's Lua does, instead of
    raising on an attacker's header.
    """
    return fnv1a_32((salt + key).encode("utf-8", "surrogateescape")) % BUCKETS


def in_percentage(key: str, percent: int, salt: str = "") -> bool:
    """Whether *key* belongs to the first *percent* buckets: sticky, and converging to *percent*%."""
    return bucket_of(key, salt) < percent
