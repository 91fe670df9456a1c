"""The sticky hash, bit for bit. These vectors are the contract the Lua emitter must reproduce.

The first three are the published FNV-1a 32-bit reference values; the rest pin our bucket rule.
"""

from __future__ import annotations

import pytest

from lane.core.hashing import bucket_of, fnv1a_32, in_percentage

HASH_VECTORS = [
    # (key, fnv1a_32, bucket)
    ("", 0x811C9DC5, 61),
    ("a", 0xE40C292C, 20),
    ("foobar", 0xBF9CF968, 20),
    ("user-1", 0xF5537974, 0),
    ("xiaoming", 0x73A1406B, 27),
    ("用户", 0x1BE4CBB9, 93),
]


@pytest.mark.parametrize(("key", "digest", "bucket"), HASH_VECTORS)
def test_hash_vectors(key: str, digest: int, bucket: int) -> None:
    assert fnv1a_32(key.encode("utf-8")) == digest
    assert bucket_of(key) == bucket == digest % 100


def test_percentage_boundaries() -> None:
    assert not in_percentage("user-1", 0)  # bucket 0: 0% never matches
    assert in_percentage("user-1", 1)
    assert in_percentage("", 62) and not in_percentage("", 61)
    assert all(in_percentage(f"k{i}", 100) for i in range(100))


def test_salt_is_a_prefix_of_the_hashed_bytes() -> None:
    assert bucket_of("1", salt="user-") == bucket_of("user-1")


def test_invalid_utf8_header_bytes_hash_as_they_were_on_the_wire() -> None:
    # aiohttp decodes header bytes with surrogateescape; b"a\xff" arrives as "a\udcff".
    raw = b"user-\xff\xfe"
    assert bucket_of(raw.decode("utf-8", "surrogateescape")) == fnv1a_32(raw) % 100
    assert in_percentage(raw.decode("utf-8", "surrogateescape"), 100)
