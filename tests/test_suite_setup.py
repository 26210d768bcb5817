"""The test session's own set-up (tests/conftest.py): its XLA flags, one strict dtype
promotion for every thread and subprocess, the kept compilation cache, the programs
a worker holds kept under the kernel's limit on memory maps, each test run from a
deep frame."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import (
    DEEP_FRAME_SLOTS,
    USER_XLA_FLAGS,
    XLA_LEVEL,
    in_a_deep_frame,
    release_programs_near_map_limit,
    session_xla_flags,
    trim_cache,
)

import kinetic_jax as kj


def _mixed_sum_dtype() -> str:
    """float32 + int32: an error under strict promotion, float32 under standard."""
    try:
        return str((jnp.ones(2, jnp.float32) + jnp.ones(2, jnp.int32)).dtype)
    except jax.dtypes.TypePromotionError as e:
        return type(e).__name__


def test_strict_promotion_in_this_thread_another_and_a_subprocess():
    # The in-process dashboard computes in worker threads, which a context manager
    # entered in the test's thread would not reach.
    assert _mixed_sum_dtype() == "TypePromotionError"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(_mixed_sum_dtype).result() == "TypePromotionError"
    out = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.config.jax_numpy_dtype_promotion)"],
        capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "strict"


@pytest.mark.standard_promotion
def test_a_test_can_opt_out_of_strict_promotion():
    assert _mixed_sum_dtype() == "float32"


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


def test_the_stored_programs_count_towards_the_limit(tmp_path):
    _fill(tmp_path / "cache", [100, 100, 100])
    _fill(tmp_path / "cache" / "programs", [101])
    assert trim_cache(str(tmp_path / "cache"), 400)
    assert not (tmp_path / "cache").exists() or os.listdir(tmp_path / "cache") == []


def test_a_missing_cache_is_empty(tmp_path):
    assert not trim_cache(str(tmp_path / "never-made"), 0)


def test_a_worker_near_the_memory_map_limit_clears_its_programs(monkeypatch):
    cleared, near = [], [False]
    monkeypatch.setattr(kj, "clear_caches", lambda: cleared.append(1))
    monkeypatch.setattr(kj, "near_map_limit", lambda fraction=0.5: near[0])
    assert not release_programs_near_map_limit() and cleared == []
    near[0] = True
    assert release_programs_near_map_limit() and cleared == [1]


SESSION_FLAGS = "--xla_cpu_use_fusion_emitters=false --xla_disable_hlo_passes=constant_folding"


def test_the_session_compiles_at_level_1_unless_told():
    never = lambda: pytest.fail("the plugin check ran")  # noqa: E731
    cpu = lambda: False  # noqa: E731
    assert session_xla_flags({}, cpu) == f"--xla_backend_optimization_level=1 {SESSION_FLAGS}"
    assert session_xla_flags({XLA_LEVEL: " "}, cpu) == session_xla_flags({}, cpu)
    assert session_xla_flags({XLA_LEVEL: "0", "XLA_FLAGS": "--xla_dump_to=/tmp/d"}, cpu) == (
        f"--xla_dump_to=/tmp/d --xla_backend_optimization_level=0 {SESSION_FLAGS}")
    # A level in XLA_FLAGS, or an accelerator plugin: the flags are left alone.
    assert session_xla_flags({"XLA_FLAGS": "--xla_backend_optimization_level=3",
                              XLA_LEVEL: "0"}, never) is None
    assert session_xla_flags({}, lambda: True) is None


@pytest.mark.parametrize("value", ["4", "-1", "one", "1.0"])
def test_a_bad_session_level_is_named(value):
    with pytest.raises(ValueError) as e:
        session_xla_flags({XLA_LEVEL: value}, lambda: False)
    assert str(e.value) == f"KINETIC_JAX_TEST_XLA_LEVEL: {value!r} is not one of 0, 1, 2, 3"


def test_this_session_runs_under_the_flags_it_set():
    """Unless the flags were the caller's (a level in them, or an accelerator): then
    the session did not record the user's flags either."""
    if USER_XLA_FLAGS not in os.environ:
        assert "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", "") or (
            jax.default_backend() != "cpu")
        return
    expected = session_xla_flags({"XLA_FLAGS": os.environ[USER_XLA_FLAGS],
                                  XLA_LEVEL: os.environ.get(XLA_LEVEL, "")}, lambda: False)
    assert os.environ["XLA_FLAGS"] == expected


def _deep_frames() -> list:
    """The `in_a_deep_frame` frames the caller runs in (innermost first)."""
    frames, frame = [], sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_deep_frame":
            frames.append(frame)
        frame = frame.f_back
    return frames


@pytest.fixture
def frames_at_set_up():
    return _deep_frames()


def test_fixture_set_up_and_call_run_in_a_deep_frame(frames_at_set_up):
    """Each test's set-up and call run from one frame that reserves 512 KiB of
    CPython's frame stack (`conftest.in_a_deep_frame`)."""
    for frames in (frames_at_set_up, _deep_frames()):
        assert len(frames) == 1
        code = frames[0].f_code
        assert code.co_nlocals >= DEEP_FRAME_SLOTS
        assert code.co_nlocals * 8 >= 512 * 1024  # one pointer per local


def test_in_a_deep_frame_passes_arguments_results_and_errors():
    assert in_a_deep_frame(lambda a, *, b: (a, b, len(_deep_frames())), 1, b=2) == (1, 2, 2)
    with pytest.raises(KeyError, match="missing"):
        in_a_deep_frame({}.__getitem__, "missing")


@pytest.fixture(scope="module")
def module_app(tmp_path_factory):
    from kinetic_jax.dashboard import create_app

    return create_app(None, tmp_path_factory.mktemp("app") / "state.json")


def test_apps_made_by_module_fixtures_wait_for_the_engine(module_app):
    """conftest's `_in_process_dashboards_wait` comes before module fixtures: an
    app one makes waits for a cold compile (a 503 at 4 s failed the fuzz test on
    a clean clone), while the served default stays 4 s."""
    from kinetic_jax.dashboard import _app

    assert module_app.state.dashboard.engine.answer_within_s == 600.0
    engine = _app.Engine()
    try:
        assert engine.answer_within_s == 4.0  # the class default: the served limit
    finally:
        engine.shutdown()
