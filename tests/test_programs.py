"""The engine's programs kept across processes (kinetic_jax/_programs.py): a
stored program is called without tracing the function again, computes what the
traced one computes, is keyed on everything the trace depends on, and every case
the store cannot serve falls back to ``eqx.filter_jit``."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kinetic_jax as kj
from kinetic_jax import _programs

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A program store of this test's own, and nothing of the session's in memory."""
    directory = tmp_path / "programs"
    monkeypatch.setattr(_programs, "_store", directory)
    _programs.clear()
    yield directory
    _programs.clear()


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.pkl")) if directory.exists() else []


def counting_program():
    """A Program whose function records each trace, with a static output."""
    traces: list[str] = []

    def scaled(x, factor: float, label: str):
        traces.append(label)
        return {"y": x * factor + 1, "label": label}

    return _programs.Program(scaled), traces


def test_a_stored_program_is_loaded_not_traced(store):
    program, traces = counting_program()
    x = jnp.arange(4.0, dtype=jnp.float32)
    out = program(x, 2.0, "a")
    np.testing.assert_array_equal(out["y"], [1.0, 3.0, 5.0, 7.0])
    assert out["label"] == "a" and traces == ["a"]
    assert len(entries(store)) == 1
    # A value change: no trace, no new entry.
    np.testing.assert_array_equal(program(x + 1, 2.0, "a")["y"], [3.0, 5.0, 7.0, 9.0])
    assert traces == ["a"] and len(entries(store)) == 1
    # A new process, as far as the program can tell: read from disk, never traced.
    program.forget()
    jax.clear_caches()
    again = program(x, 2.0, "a")
    np.testing.assert_array_equal(again["y"], out["y"])
    assert again["label"] == "a" and traces == ["a"]
    # Another static value or shape is another program.
    program(x, 3.0, "a")
    program(jnp.arange(8.0, dtype=jnp.float32), 2.0, "a")
    assert traces == ["a", "a", "a"] and len(entries(store)) == 3


def test_the_key_covers_dtype_configuration_and_source(store, monkeypatch):
    program, traces = counting_program()
    x = jnp.ones(3, jnp.float32)
    program(x, 2.0, "a")
    program(x.astype(jnp.float16), 2.0, "a")  # dtype
    with jax.numpy_dtype_promotion("standard"):  # the tracing configuration
        program(x, 2.0, "a")
    assert len(traces) == 3 and len(entries(store)) == 3
    # Another version of the package's source (or of jax, ...): nothing found.
    monkeypatch.setattr(_programs, "_environment", "another source tree")
    program.forget()
    program(x, 2.0, "a")
    assert len(traces) == 4 and len(entries(store)) == 4


def test_what_the_store_cannot_serve_falls_back(store, tmp_path):
    program, traces = counting_program()
    x = jnp.arange(3.0, dtype=jnp.float32)
    # Under a transformation the arguments are tracers: filter_jit, nothing stored.
    grad = jax.grad(lambda v: program(v, 2.0, "g")["y"].sum())(x)
    np.testing.assert_array_equal(grad, [2.0, 2.0, 2.0])
    batched = jax.vmap(lambda v: program(v, 3.0, "v")["y"])(jnp.ones((2, 3), jnp.float32))
    np.testing.assert_array_equal(batched, np.full((2, 3), 4.0))
    assert entries(store) == []
    # A static argument that is not a plain value has no stable key.
    marker = object()

    def tagged(x, tag):
        return x + 1

    other = _programs.Program(tagged)
    np.testing.assert_array_equal(other(x, marker), x + 1)
    assert entries(store) == []
    # An entry that cannot be read is exported again and replaced.
    program(x, 2.0, "a")
    (entry,) = store.glob("*.pkl")
    entry.write_bytes(b"not a pickle")
    program.forget()
    np.testing.assert_array_equal(program(x, 2.0, "a")["y"], x * 2 + 1)
    assert traces[-2:] == ["a", "a"] and entry.read_bytes() != b"not a pickle"


def test_a_store_that_cannot_be_written_costs_only_the_saving(tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setattr(_programs, "_store", blocker / "programs")  # cannot be made
    program, traces = counting_program()
    x = jnp.ones(2, jnp.float32)
    np.testing.assert_array_equal(program(x, 2.0, "a")["y"], [3.0, 3.0])
    np.testing.assert_array_equal(program(x, 5.0, "a")["y"], [6.0, 6.0])
    assert traces == ["a", "a"] and not list(tmp_path.rglob("*.pkl"))


def test_a_write_that_fails_half_way_leaves_no_file(store, monkeypatch):
    """The entry is written to a temporary file and moved into place; when the
    move fails the temporary file is removed and the call still answers."""
    def refuse(src, dst):
        raise OSError("no room")

    monkeypatch.setattr(_programs.os, "replace", refuse)
    program, traces = counting_program()
    x = jnp.ones(2, jnp.float32)
    np.testing.assert_array_equal(program(x, 2.0, "a")["y"], [3.0, 3.0])
    assert store.is_dir() and list(store.iterdir()) == []  # made, then left empty


@pytest.mark.parametrize("sampler", ["plain", "exact_block"])
def test_the_engine_computes_the_same_from_the_store(store, monkeypatch, sampler):
    """The reference book's margin report: traced by filter_jit (no store),
    exported into the store, and read back from it: the same bits."""
    book = kj.load_book(REFERENCE).with_settings(sampler=sampler)

    def report():
        return kj.portfolio_margin(book, scenarios=2048)  # a frozen dataclass: all figures

    monkeypatch.setattr(_programs, "_store", None)
    traced = report()
    monkeypatch.setattr(_programs, "_store", store)
    exported = report()
    assert any(name.startswith("margin_arrays-") for name in entries(store))
    _programs.clear()
    jax.clear_caches()
    loaded = report()
    assert traced == exported == loaded


def test_enable_compilation_cache_sets_the_store(tmp_path, monkeypatch):
    monkeypatch.setattr(_programs, "_store", None)
    previous = jax.config.jax_compilation_cache_dir
    try:
        directory = kj.enable_compilation_cache(tmp_path / "cache")
        assert _programs.store() == directory / "programs"
        assert kj.enable_compilation_cache(directory, store_programs=False) == directory
        assert _programs.store() is None
    finally:
        kj.enable_compilation_cache(previous)


def test_a_program_is_its_jitted_function_for_everything_else(store):
    """Attributes other than the call are ``eqx.filter_jit``'s (``lower`` for
    ahead-of-time use, as experiments/hedge_certificate.py does), and the
    function's name and docstring are the wrapped function's."""
    program, traces = counting_program()
    lowered = program.lower(jnp.ones(2, jnp.float32), 2.0, "a")
    assert "stablehlo" in lowered.as_text() and program.__name__ == "scaled"
    assert kj.margin_jit.__doc__ and kj.margin_jit.__doc__ == kj.margin_jit.fn.__doc__
    assert entries(store) == []  # lowering stores nothing
