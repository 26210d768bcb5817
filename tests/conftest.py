"""Shared test configuration.

- Every test runs under strict dtype promotion (``jax.numpy_dtype_promotion("strict")``),
  so an accidental float32/float64 or bool/float mix in the engine fails loudly. A
  test that needs JAX's standard promotion opts out with
  ``@pytest.mark.standard_promotion``.
- The `x64` fixture runs one test with ``jax_enable_x64`` switched on and restores
  the previous setting afterwards (a context manager, so nothing leaks into other
  tests even when the test fails). Nothing enables x64 globally.
"""

from __future__ import annotations

import jax
import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "standard_promotion: run without strict dtype promotion"
    )


@pytest.fixture(autouse=True)
def _strict_dtype_promotion(request):
    if request.node.get_closest_marker("standard_promotion") is not None:
        yield
        return
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def x64():
    """Runs the test with 64-bit floats enabled (restored afterwards)."""
    with jax.enable_x64(True):
        yield
