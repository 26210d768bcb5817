"""JAX's persistent compilation cache for the command line and the dashboard.

A margin call spends most of a short CLI run compiling (seconds) and little
computing (tens of milliseconds). With the persistent cache on, the compiled
programs are written to disk and a later process that needs the same program
(same book-size bucket, scenario count, dtype, jax version and machine) loads
it instead of compiling.

The cache is never switched on by importing `kinetic_jax`: a library must not
write to the user's disk on import. The ``kinetic-jax`` command and the
dashboard call [`enable_compilation_cache`][] at start-up; a script can too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_VAR = "KINETIC_JAX_CACHE_DIR"
PROGRAMS = "programs"  # the engine's exported programs, beside JAX's entries (_programs.py)
OFF_VALUES = ("", "0", "off")


def default_cache_dir() -> Path | None:
    """Where the cache lives when no path is given (``None``: switched off).

    1. ``$KINETIC_JAX_CACHE_DIR`` when set: ``off``, ``0`` or an empty value
       switch the cache off; anything else is the directory.
    2. ``$XDG_CACHE_HOME/kinetic_jax/jax`` when ``XDG_CACHE_HOME`` is an
       absolute path (the XDG base-directory rule ignores relative ones).
    3. ``~/.cache/kinetic_jax/jax``.
    """
    value = os.environ.get(ENV_VAR)
    if value is not None:
        if value.strip().lower() in OFF_VALUES:
            return None
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "kinetic_jax" / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None, *,
                             store_programs: bool = True) -> Path | None:
    """Switches on JAX's persistent compilation cache for this process.

    **Arguments:**

    - `path`: the cache directory (created if missing). Default: see
      [`default_cache_dir`][] (``$KINETIC_JAX_CACHE_DIR``, else
      ``$XDG_CACHE_HOME/kinetic_jax/jax``, else ``~/.cache/kinetic_jax/jax``;
      ``KINETIC_JAX_CACHE_DIR=off`` switches it off).
    - `store_programs`: also keep the engine's exported programs there (below);
      False switches that off and keeps JAX's cache alone.

    Every compiled program is cached, however quick its compile and however
    small (a CPU margin program compiles in about a second), so the minimum
    compile time and entry size are set to 0. The engine's programs are also
    kept exported in its ``programs/`` subdirectory, so that a new process
    skips tracing and lowering them as well as compiling (``_programs.py``: the
    reference book's first margin call in a fresh process 1.1 -> 0.5 s, its
    first sensitivities 2.1 -> 0.7 s). Calling it again with another directory
    moves the cache (programs already compiled in this process stay in memory).

    A directory that cannot be created or written does not stop the caller: the
    cache stays off and one warning line goes to stderr. JAX's own switch
    (``JAX_ENABLE_COMPILATION_CACHE=0``) is respected: then nothing is changed.

    **Returns:** the cache directory in use, or ``None`` when the cache is off.
    """
    directory = Path(path).expanduser() if path is not None else default_cache_dir()
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(f"no write permission on '{directory}'")
    except OSError as e:
        reason = e.strerror or str(e)
        print(f"kinetic-jax: warning: compilation cache off: cannot use '{directory}' "
              f"({reason}); set {ENV_VAR} to another directory, or to 'off'",
              file=sys.stderr)
        return None

    import jax
    from jax.experimental.compilation_cache import compilation_cache

    from . import _programs

    if not jax.config.jax_enable_compilation_cache:  # JAX_ENABLE_COMPILATION_CACHE=0 wins
        return None
    directory = directory.resolve()
    _programs.set_store(directory / PROGRAMS if store_programs else None)
    if jax.config.jax_compilation_cache_dir != str(directory):
        jax.config.update("jax_compilation_cache_dir", str(directory))
        # JAX opens its cache once per process; forget a cache opened on another
        # directory so that the next compile uses this one.
        compilation_cache.reset_cache()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
