"""The test session's own set-up (tests/conftest.py): the kept compilation cache."""

from __future__ import annotations

import os

from conftest import trim_cache


def _fill(directory, sizes: list[int]) -> None:
    directory.mkdir(exist_ok=True)
    for i, size in enumerate(sizes):
        (directory / f"jit_f-{i}-cache").write_bytes(b"x" * size)


def test_a_kept_cache_up_to_its_limit_is_left_alone(tmp_path):
    _fill(tmp_path / "cache", [100, 100, 100, 100])
    assert not trim_cache(str(tmp_path / "cache"), 400)
    assert len(os.listdir(tmp_path / "cache")) == 4


def test_a_kept_cache_over_its_limit_is_emptied(tmp_path):
    _fill(tmp_path / "cache", [100, 100, 100, 101])
    assert trim_cache(str(tmp_path / "cache"), 400)
    assert not (tmp_path / "cache").exists() or os.listdir(tmp_path / "cache") == []


def test_a_missing_cache_is_empty(tmp_path):
    assert not trim_cache(str(tmp_path / "never-made"), 0)
