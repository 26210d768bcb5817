"""The dashboard's web server: a FastAPI app serving the page and the JSON
margin service (OpenAPI document at /openapi.json, rendered at /docs).

Endpoints (all JSON unless noted; errors are ``{"error": {"field", "detail",
"message"}}`` with status 400 / 413 / 422 / 500, never a traceback):

- ``GET  /``                      the page
- ``GET  /api/health``            status, limits, JAX trace/compile counters
- ``POST /api/margin``            book -> report, waterfall, loss histogram, sensitivities
- ``POST /api/losses``            book -> the loss histogram alone
- ``POST /api/sensitivities``     book -> kinetic_jax.sensitivities(book).to_dict()
- ``POST /api/validate``          book -> the normalised book, or the field error
- ``GET  /api/state``             the saved book and page settings
- ``PUT  /api/state``             save them (validated, atomic write)
- ``POST /api/state/reset``       back to the source book (the BOOK file or the reference)
- ``GET  /api/reference``         the reference book
- ``POST /api/export``            book -> TOML text; ``GET /api/export``: the saved book
- ``POST /api/import``            TOML text -> the validated book
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import threading
from importlib import resources
from typing import Any

import tomli_w
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

import kinetic_jax as kj
from kinetic_jax import Book, BookError

from . import _service as service
from ._schema import BOOK_EXAMPLE, BOOK_SCHEMA, error_responses, json_body
from ._state import REFERENCE, Source, State, StateStore, clean_ui, default_state_path, sha256

MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_BOOK_FILE_BYTES = 16 * 1024 * 1024
STATIC = resources.files("kinetic_jax.dashboard") / "static"

logger = logging.getLogger("kinetic_jax.dashboard")


# ---------------------------------------------------------------------------
# Errors as JSON
# ---------------------------------------------------------------------------
def error_response(status: int, field: str, detail: str) -> JSONResponse:
    message = f"{field}: {detail}" if field else detail
    return JSONResponse(status_code=status,
                        content={"error": {"field": field, "detail": detail, "message": message}})


def book_error_response(e: BookError) -> JSONResponse:
    if not e.field:  # the engine's own complaint (e.g. a non-finite figure)
        return error_response(500, "", e.detail)
    unreadable = e.field == "book" and ("is not valid" in e.detail or "UTF-8" in e.detail)
    status = 400 if unreadable else 422
    return error_response(status, e.field, e.detail)


class BodyLimit:
    """ASGI middleware refusing request bodies over `limit` bytes with 413,
    before anything parses them: by Content-Length when given, else by
    counting the streamed chunks (the body is buffered up to the limit only)."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await self._refuse(send, 400, "Content-Length is not a number")
            if n > self.limit:
                return await self._refuse(send, 413, self._too_large(n))
        # Read (at most limit + 1 bytes of) the body, then replay it.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._refuse(send, 413, self._too_large(size, streamed=True))
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _too_large(self, n: int, streamed: bool = False) -> str:
        size = f"over {n - 1:,} bytes" if streamed else f"{n:,} bytes"
        return f"request body of {size} is over the service's limit of {self.limit:,} bytes"

    async def _refuse(self, send, status: int, detail: str):
        response = error_response(status, "body", detail)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(response.body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": response.body})


# ---------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------
def _read_book_file(path: str | os.PathLike) -> tuple[Book, Source]:
    path = os.path.abspath(os.fspath(path))
    try:
        size = os.path.getsize(path)
        if size > MAX_BOOK_FILE_BYTES:
            raise BookError("book", f"{path} is {size} bytes, over the "
                                    f"{MAX_BOOK_FILE_BYTES} limit")
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise BookError("book", f"cannot read {path!r}: {e.strerror or e}") from None
    book = kj.loads_book(raw, json_format=path.lower().endswith(".json"), name=path)
    return book, Source(path, sha256(raw))


def _reference() -> tuple[Book, Source]:
    return service.reference_book(), Source(REFERENCE, sha256(service.reference_book_text()))


class Dashboard:
    """The server-side state of one dashboard: the source book, the saved
    state, the engine lock (one computation at a time: the machine's cores go
    to the latest request, not to several at once)."""

    def __init__(self, book_path, state_path):
        self.book_path = book_path
        self.store = StateStore(state_path if state_path is not None else default_state_path())
        if book_path is not None:
            book, source = _read_book_file(book_path)  # BookError: the CLI exits 2
        else:
            book, source = _reference()
        service.check_limits(book)
        self.source = source
        saved = self.store.load()
        if saved is not None and (book_path is None or saved.source == source):
            self.state = saved
            self.source = saved.source
        else:
            self.state = State(book=book, ui={}, source=source)
        self.engine = threading.Lock()
        self.sens_engine = threading.Lock()  # sensitivities never hold up a margin
        self.state_lock = threading.Lock()
        self.warm = threading.Event()
        self.warmup_error: str | None = None

    def source_book(self) -> Book:
        if self.source.path != REFERENCE:
            try:
                book, _ = _read_book_file(self.source.path)
                return book
            except BookError as e:
                logger.warning("source book %s is unusable (%s); using the reference book",
                               self.source.path, e)
        return service.reference_book()

    def compute(self, fn, *args):
        with self.engine:
            return fn(*args)

    def compute_sensitivities(self, book: Book):
        with self.sens_engine:
            return service.sensitivities(book)

    def warm_up(self) -> None:
        try:
            self.compute(service.margin_response, self.state.book, service.DEFAULT_BINS, False)
            self.compute_sensitivities(self.state.book)
        except Exception as e:  # noqa: BLE001 - reported by /api/health, never raised
            self.warmup_error = f"{type(e).__name__}: {e}"
            logger.warning("warm-up failed: %s", self.warmup_error)
        finally:
            self.warm.set()


def _parse_json_book(raw: bytes) -> Book:
    book = kj.loads_book(raw, json_format=True, name="request body")
    service.check_limits(book)
    return book


def _parse_state_body(raw: bytes) -> tuple[Book, dict]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BookError("book", f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BookError("body", "expected an object {\"book\": {...}, \"ui\": {...}}")
    unknown = set(data) - {"book", "ui"}
    if unknown:
        raise BookError(f"{sorted(unknown)[0]}", "unknown key (allowed: book, ui)")
    if "book" not in data:
        raise BookError("book", "missing")
    book = kj.parse_book(data["book"])
    service.check_limits(book)
    return book, clean_ui(data.get("ui"))


def _toml(book: Book) -> str:
    stamp = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    header = (f"# kinetic_jax book exported from the dashboard at {stamp}\n"
              f"# Run: kinetic-jax margin THIS_FILE\n\n")
    return header + tomli_w.dumps(kj.book_to_dict(book))


def create_app(
    book_path: str | os.PathLike | None = None,
    state_path: str | os.PathLike | None = None,
    *,
    warmup: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The dashboard app.

    **Arguments:**

    - `book_path`: a book file to open; None opens the saved state if there is
      one, else the reference book. A given book replaces the saved state
      unless the state was saved from the same, unchanged file.
    - `state_path`: the state file (default ``~/.kinetic_jax/dashboard.json``).
    - `warmup`: compile the engine for the current book in a background thread
      at start-up, so that the page's first computation is fast.
    - `max_body_bytes`: larger request bodies are refused with 413.

    Raises [`BookError`][] if `book_path` is not a valid book.
    """
    dash = Dashboard(book_path, state_path)
    counter = service.compile_counter()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if warmup:
            threading.Thread(target=dash.warm_up, name="kinetic-jax-warmup", daemon=True).start()
        else:
            dash.warm.set()
        yield

    app = FastAPI(
        title="kinetic_jax margin service",
        version=kj.__version__,
        description=(
            "Portfolio margin for binary prediction-market contracts. POST a book "
            "(SPEC.md §3 structure as JSON) to `/api/margin` to get the SPEC.md §4 report, "
            "the margin waterfall, the Monte-Carlo loss histogram with VaR and ES, and the "
            "sensitivities. Errors are JSON `{\"error\": {\"field\", \"detail\", "
            "\"message\"}}`; bodies over "
            f"{max_body_bytes:,} bytes get 413, more than {service.MAX_SCENARIOS:,} "
            "scenarios get 422."
        ),
        lifespan=lifespan,
    )
    app.state.dashboard = dash
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body"))
        return error_response(422, field or "request", err.get("msg", "invalid request"))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):  # pragma: no cover - last line of defence
        logger.exception("internal error")
        return error_response(500, "", f"internal error: {type(exc).__name__}")

    async def guarded(fn, *args) -> Any:
        """Runs `fn` in the thread pool; BookError -> 4xx, anything else -> 500."""
        try:
            return await run_in_threadpool(fn, *args)
        except BookError as e:
            return book_error_response(e)
        except MemoryError:
            return error_response(500, "", "out of memory: lower the scenario count")
        except Exception as e:  # noqa: BLE001 - never let a traceback reach a user
            logger.exception("internal error")
            text = str(e).splitlines()[0][:300] if str(e) else ""
            return error_response(500, "", f"internal error: {type(e).__name__}: {text}")

    # ---- the page --------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js():
        path = resources.files("plotly") / "package_data" / "plotly.min.js"
        return FileResponse(str(path), media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    # ---- service -----------------------------------------------------------
    @app.get("/api/health", tags=["service"])
    def health() -> dict:
        """Status, limits, and JAX's trace/compile counters (a value change in the
        book must leave `compiles` unchanged)."""
        return {
            "status": "ok",
            "version": kj.__version__,
            "warm": dash.warm.is_set(),
            "warmup_error": dash.warmup_error,
            "sensitivities": True,
            "jax": counter.snapshot(),
            "limits": {"max_body_bytes": max_body_bytes,
                       "max_scenarios": service.MAX_SCENARIOS,
                       "max_cells": service.MAX_CELLS, "max_bins": service.MAX_BINS},
            "state_path": str(dash.store.path),
            "source": dash.source.to_dict(),
        }

    book_body = json_body(BOOK_SCHEMA, BOOK_EXAMPLE, "a book (SPEC.md §3 structure as JSON)")

    @app.post("/api/margin", tags=["service"], openapi_extra=book_body,
              responses=error_responses(400, 413, 422, 500))
    async def margin(
        request: Request,
        bins: int = Query(service.DEFAULT_BINS, ge=1, le=service.MAX_BINS,
                          description="bins of the loss histogram"),
        sensitivities: bool = Query(True, description="include the sensitivities "
                                                      "(null if unavailable)"),
        histogram: bool = Query(True, description="include the loss histogram"),
    ):
        """Margins a book: `report` (SPEC.md §4, MarginReport.to_dict()), `waterfall`,
        `histogram` (the simulated loss distribution of the book with `var` and `es`
        of the same draws), `sensitivities`, `hierarchy`, `timing`."""
        raw = await request.body()

        def run():
            book = _parse_json_book(raw)
            return dash.compute(service.margin_response, book, bins, sensitivities, histogram)

        return await guarded(run)

    @app.post("/api/losses", tags=["service"], openapi_extra=book_body,
              responses=error_responses(400, 413, 422, 500))
    async def losses(
        request: Request,
        bins: int = Query(service.DEFAULT_BINS, ge=1, le=service.MAX_BINS,
                          description="bins of the loss histogram"),
    ):
        """The histogram of the book's simulated losses (``kinetic_jax.margin_with_losses``,
        the draws of the margin call), with the report's VaR (`var`) and ES
        (`es`, the base) of the same draws."""
        raw = await request.body()

        def run():
            book = _parse_json_book(raw)
            return dash.compute(service.losses_response, book, bins)

        return await guarded(run)

    @app.post("/api/sensitivities", tags=["service"], openapi_extra=book_body,
              responses=error_responses(400, 413, 422, 500))
    async def sensitivities_endpoint(request: Request):
        """``kinetic_jax.sensitivities(book).to_dict()``: d margin / d quantity and
        d price per position, the Euler allocation, d margin / d rho per node and
        d margin / d loading per cluster."""
        raw = await request.body()

        def run():
            book = _parse_json_book(raw)
            return {"sensitivities": dash.compute_sensitivities(book)}

        return await guarded(run)

    @app.post("/api/validate", tags=["service"], openapi_extra=book_body,
              responses=error_responses(400, 413, 422))
    async def validate(request: Request):
        """Checks a book without computing: the normalised book, or the field error."""
        raw = await request.body()
        return await guarded(lambda: {"ok": True, "book": kj.book_to_dict(_parse_json_book(raw))})

    @app.get("/api/reference", tags=["service"])
    def reference() -> dict:
        """The reference book (examples/reference_book.toml) as JSON."""
        return {"book": kj.book_to_dict(service.reference_book())}

    # ---- persistence -----------------------------------------------------
    def state_payload(state: State) -> dict:
        return service.finite(state.to_dict())

    @app.get("/api/state", tags=["state"])
    def get_state() -> dict:
        """The saved book and page settings (what comes back after a restart)."""
        return state_payload(dash.state)

    state_body = json_body(
        {"type": "object", "required": ["book"],
         "properties": {"book": BOOK_SCHEMA,
                        "ui": {"type": "object", "description": "page settings (scalars)"}}},
        {"book": BOOK_EXAMPLE, "ui": {"auto": True, "bins": 60}},
        "the book and the page settings",
    )

    @app.put("/api/state", tags=["state"], openapi_extra=state_body,
             responses=error_responses(400, 413, 422, 500))
    async def put_state(request: Request):
        """Validates and saves the book and page settings (atomic write)."""
        raw = await request.body()

        def run():
            book, ui = _parse_state_body(raw)
            with dash.state_lock:
                try:
                    dash.state = dash.store.save(State(book=book, ui=ui, source=dash.source))
                except OSError as e:
                    logger.error("cannot save the dashboard state: %s", e)
                    return error_response(500, "", f"cannot save the state to "
                                          f"{dash.store.path}: {e.strerror or e}")
                return state_payload(dash.state)

        return await guarded(run)

    @app.post("/api/state/reset", tags=["state"], responses=error_responses(500))
    async def reset_state():
        """Discards the edits: back to the source book (and default page settings)."""

        def run():
            with dash.state_lock:
                dash.state = dash.store.save(State(book=dash.source_book(), ui={},
                                                   source=dash.source))
                return state_payload(dash.state)

        return await guarded(run)

    toml_response = {200: {"content": {"application/toml": {}},
                           "description": "the book as TOML"}}

    @app.get("/api/export", tags=["state"], response_class=Response, responses=toml_response)
    def export_saved():
        """The saved book as a TOML book file."""
        return _toml_response(dash.state.book)

    @app.post("/api/export", tags=["state"], openapi_extra=book_body, response_class=Response,
              responses={**toml_response, **error_responses(400, 413, 422)})
    async def export_book(request: Request):
        """A book (JSON) as a TOML book file (written with tomli_w)."""
        raw = await request.body()
        result = await guarded(lambda: _toml_response(_parse_json_book(raw)))
        return result

    @app.post(
        "/api/import", tags=["state"], responses=error_responses(400, 413, 422),
        openapi_extra={"requestBody": {"required": True, "description": "a TOML book file",
                                       "content": {"application/toml": {
                                           "schema": {"type": "string"}}}}},
    )
    async def import_book(request: Request):
        """Reads a TOML book file (validated with ``kinetic_jax.loads_book``) and
        returns it as JSON. Nothing is saved until the page saves it."""
        raw = await request.body()

        def run():
            book = kj.loads_book(raw, name="imported file")
            service.check_limits(book)
            return {"book": kj.book_to_dict(book)}

        return await guarded(run)

    return app


def _toml_response(book: Book) -> Response:
    return Response(_toml(book), media_type="application/toml",
                    headers={"Content-Disposition": 'attachment; filename="book.toml"'})


def run(book_path=None, state_path=None, *, host: str = "127.0.0.1", port: int = 8765,
        open_browser: bool = False, log_level: str = "warning") -> None:
    """Starts the dashboard with uvicorn (blocking) and prints its URL."""
    import uvicorn

    app = create_app(book_path, state_path, warmup=True)
    display = f"[{host}]" if ":" in host else host
    url = f"http://{display}:{port}/"
    dash: Dashboard = app.state.dashboard
    print(f"kinetic-jax dashboard: {url}", flush=True)
    print(f"  book:  {dash.source.path}", flush=True)
    print(f"  state: {dash.store.path}", flush=True)
    print("  API docs: " + url + "docs   (Ctrl+C to stop)", flush=True)
    if open_browser:  # pragma: no cover - interactive
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=host, port=port, log_level=log_level)


