"""The interactive margin dashboard and JSON margin service (``kinetic-jax dashboard``).

Needs the ``dashboard`` extra (``pip install 'kinetic-jax[dashboard]'``: fastapi,
uvicorn, plotly, tomli-w). Uses only the public kinetic_jax API; the numerical
core never imports this package. See docs/dashboard.md.
"""

from ._app import MAX_BODY_BYTES as MAX_BODY_BYTES, create_app as create_app, run as run
from ._service import (
           MAX_SCENARIOS as MAX_SCENARIOS,
           SCENARIO_CHOICES as SCENARIO_CHOICES,
           Limits as Limits,
)
from ._state import default_state_path as default_state_path

__all__ = ["MAX_BODY_BYTES", "MAX_SCENARIOS", "SCENARIO_CHOICES", "Limits", "create_app",
           "default_state_path", "run"]
