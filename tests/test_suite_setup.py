"""The test session's own set-up (tests/conftest.py): the kept compilation cache."""

from __future__ import annotations

import os

from conftest import trim_cache


def _entry(directory, name: str, size: int, mtime: int) -> None:
    path = directory / name
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))


def test_a_kept_cache_under_its_limit_is_left_alone(tmp_path):
    for i in range(4):
        _entry(tmp_path, f"jit_f-{i}-cache", 100, 1_000 + i)
    assert trim_cache(str(tmp_path), 400) == []
    assert len(os.listdir(tmp_path)) == 4


def test_trim_deletes_oldest_first_down_to_half_the_limit(tmp_path):
    """Four 100-byte entries over a 300-byte limit: the oldest go (by modification
    time, whatever the names' order) until at most 150 bytes remain."""
    for name, mtime in (("jit_a-3-cache", 1_003), ("jit_b-1-cache", 1_001),
                        ("jit_c-4-cache", 1_004), ("jit_d-2-cache", 1_002)):
        _entry(tmp_path, name, 100, mtime)
    assert trim_cache(str(tmp_path), 300) == ["jit_b-1-cache", "jit_d-2-cache",
                                              "jit_a-3-cache"]
    assert os.listdir(tmp_path) == ["jit_c-4-cache"]


def test_trim_of_a_missing_directory_deletes_nothing(tmp_path):
    assert trim_cache(str(tmp_path / "never-made"), 1) == []
