"""The dashboard's web server: a FastAPI app serving the page and the JSON
margin service (OpenAPI document at /openapi.json, rendered at /docs from local
assets).

Endpoints (all JSON unless noted; errors are ``{"error": {"field", "detail",
"message", "path"}}`` with status 400 / 403 / 404 / 405 / 409 / 413 / 415 /
422 / 503, or 500 for an engine fault, never a traceback):

- ``GET  /``                      the page (ES modules under /static/js)
- ``GET  /docs``                  the API reference (local page over /openapi.json)
- ``GET  /api/health``            status, limits, engine queue, JAX trace/compile counters
- ``GET  /api/config``            enums, defaults, bounds and limits (what the page uses)
- ``POST /api/margin``            book -> report, waterfall, loss histogram, sensitivities
- ``POST /api/losses``            book -> the loss histogram alone
- ``POST /api/sensitivities``     book -> kinetic_jax.sensitivities(book).to_dict()
- ``POST /api/validate``          book -> the normalised book, or the field error
- ``GET  /api/state``             the saved book and page settings
- ``PUT  /api/state``             save them (validated, atomic write)
- ``POST /api/state/reset``       back to the source book (the BOOK file or the reference)
- ``GET  /api/reference``         the reference book
- ``POST /api/export``            book -> TOML text; ``GET /api/export``: the saved book
- ``POST /api/import``            TOML text (``application/toml``) -> the validated book

Same-origin writes only (docs/dashboard.md): the ``Host`` header must name the
server (loopback names, plus the host it was started on), a present ``Origin``
must be the server's own, and every POST/PUT carries ``application/json``
(``application/toml`` for /api/import), which a cross-site page cannot send
without a CORS preflight the server never grants.

Back-pressure: engine work (margin, losses, sensitivities) runs on the
engine's own threads, never on the thread pool that serves the page, static
files and /api/health; at most `queue_size` requests wait for it, more get 503
with ``Retry-After``; a request superseded by a newer one from the same page
(header ``X-Kinetic-Page``) before it reaches the engine gets 409. No request
waits more than `ANSWER_WITHIN_S` for the engine: one still computing then gets
503 with ``Retry-After``, and the same request sent again collects the result.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import datetime as _dt
import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import tomli_w
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

import kinetic_jax as kj
from kinetic_jax import Book, BookError

from . import _service as service, _whatif as what_if_service
from ._schema import BOOK_EXAMPLE, book_schema, config, error_responses, json_body
from ._state import REFERENCE, Source, State, StateStore, clean_ui, default_state_path, sha256

MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_BOOK_FILE_BYTES = 16 * 1024 * 1024
QUEUE_SIZE = 8  # engine requests waiting or running; more get 503
RETRY_AFTER_S = 2
# An engine request still running after this many seconds gets 503 with
# Retry-After; its computation goes on, and the same request sent again collects
# the result (`Engine.answer`). Mostly a first request of a new shape, compiling.
ANSWER_WITHIN_S = 4.0
KEPT_RESULTS = 32  # finished results of such requests kept for their retry
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
STATIC = resources.files("kinetic_jax.dashboard") / "static"

logger = logging.getLogger("kinetic_jax.dashboard")


# ---------------------------------------------------------------------------
# Errors as JSON
# ---------------------------------------------------------------------------
def field_path(field: str) -> tuple[list, str | None]:
    """The JSON path of a BookError field, and the event it names if any:
    ``"contracts[3] (id 'X').price"`` -> ``(["contracts", 3, "price"], None)``,
    ``"contracts (event 'E')"`` -> ``(["contracts"], "E")``. Parenthesised
    remarks (ids, quoted with Python's repr, and nested remarks such as
    ``"trades (positions[1] (contract 'B').quantity)"``, which point into a
    book built from the request rather than into the request) are skipped, not
    followed, except for the event they name; a quoted key in brackets
    (``"trades['A']"``) is unquoted."""
    path: list = []
    event = None
    i, n = 0, len(field)
    while i < n:
        ch = field[i]
        if ch == ".":
            i += 1
        elif ch == "[":
            j = field.find("]", i)
            if j < 0:
                break
            token = field[i + 1:j]
            if token.isdigit():
                path.append(int(token))
            else:
                with contextlib.suppress(ValueError, SyntaxError):
                    value = ast.literal_eval(token)
                    token = value if isinstance(value, str) else token
                path.append(token)
            i = j + 1
        elif field.startswith(" (", i):
            j, depth = i + 2, 1
            while j < n:
                if field[j] in "'\"":
                    quote, j = field[j], j + 1
                    while j < n and field[j] != quote:
                        j += 2 if field[j] == "\\" else 1
                elif field[j] == "(":
                    depth += 1
                elif field[j] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            inner = field[i + 2:j]
            if inner.startswith("event "):
                with contextlib.suppress(ValueError, SyntaxError):
                    value = ast.literal_eval(inner[len("event "):])
                    event = value if isinstance(value, str) else None
            elif event is None:
                event = field_path(inner)[1]
            i = j + 1
        else:
            j = i
            while j < n and field[j] not in ".[" and not field.startswith(" (", j):
                j += 1
            path.append(field[i:j])
            i = j
    return path, event


def error_response(status: int, field: str, detail: str,
                   headers: dict | None = None) -> JSONResponse:
    message = f"{field}: {detail}" if field else detail
    path, event = field_path(field) if field else ([], None)
    error: dict = {"field": field, "detail": detail, "message": message, "path": path}
    if event is not None:
        error["event"] = event
    return JSONResponse(status_code=status, content={"error": error}, headers=headers)


def book_error_response(e: BookError) -> JSONResponse:
    if not e.field:  # the engine's own complaint (e.g. a non-finite figure)
        return error_response(500, "", e.detail)
    unreadable = e.field == "book" and ("is not valid" in e.detail or "UTF-8" in e.detail
                                        or "nests" in e.detail)
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
                return await _refuse(send, 400, "Content-Length", "is not a number")
            if n > self.limit:
                return await _refuse(send, 413, "body", self._too_large(n))
        # Read (at most limit + 1 bytes of) the body, then replay it.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _refuse(send, 413, "body", self._too_large(size, streamed=True))
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


async def _refuse(send, status: int, field: str, detail: str, headers=()) -> None:
    response = error_response(status, field, detail)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(response.body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": response.body})


def split_host(value: str) -> str:
    """The name in a Host header (``[::1]:8765`` -> ``::1``), lower case. A
    bracketed literal followed by anything but ``:port`` (``[::1].evil``) is
    returned whole, so it matches no allowed name."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1:] if end >= 0 else None
        if rest is not None and (rest == "" or (rest[:1] == ":" and rest[1:].isdigit())):
            return value[1:end]
        return value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_host_names(host: str | None, extra=()) -> frozenset[str]:
    """The names the server answers to: loopback, the `host` it listens on
    (with this machine's names when that is a wildcard), `extra`, and
    ``$KINETIC_JAX_ALLOWED_HOSTS`` (comma-separated)."""
    names = set(LOOPBACK_HOSTS)
    if host:
        names.add(split_host(host) if not host.startswith("[") else host[1:-1].lower())
        if host in ("0.0.0.0", "::", ""):
            with contextlib.suppress(OSError):
                names.update({socket.gethostname().lower(), socket.getfqdn().lower()})
    names.update(x.strip().lower() for x in extra if x.strip())
    env = os.environ.get("KINETIC_JAX_ALLOWED_HOSTS", "")
    names.update(x.strip().lower() for x in env.split(",") if x.strip())
    return frozenset(names)


class SameOrigin:
    """ASGI middleware: the Host header must be one the server answers to (400:
    DNS rebinding fails), a present Origin must be the served origin (403), and
    a POST/PUT/PATCH must declare ``application/json`` (or
    ``application/toml`` where `toml_paths` says so; 415 otherwise)."""

    WRITES = ("POST", "PUT", "PATCH")

    def __init__(self, app, hosts: frozenset[str], toml_paths=("/api/import",)):
        self.app = app
        self.hosts = hosts
        self.toml_paths = frozenset(toml_paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        host = headers.get(b"host", b"").decode("latin-1")
        if split_host(host) not in self.hosts:
            return await _refuse(send, 400, "Host",
                                 f"{host!r} is not a name this server answers to "
                                 f"({', '.join(sorted(self.hosts))})")
        origin = headers.get(b"origin")
        if origin is not None:
            served = f"{scope.get('scheme', 'http')}://{host}".lower()
            if origin.decode("latin-1").strip().lower().rstrip("/") != served:
                return await _refuse(send, 403, "Origin",
                                     f"{origin.decode('latin-1')!r} is not this server's "
                                     f"origin ({served}): cross-origin requests are refused")
        if scope["method"] in self.WRITES:
            wanted = ("application/toml" if scope["path"] in self.toml_paths
                      else "application/json")
            given = headers.get(b"content-type", b"").decode("latin-1")
            if given.split(";")[0].strip().lower() != wanted:
                return await _refuse(send, 415, "Content-Type",
                                     f"{given!r} given; {scope['method']} "
                                     f"{scope['path']} takes {wanted}")
        return await self.app(scope, receive, send)


# ---------------------------------------------------------------------------
# The engine: its own threads, a bounded queue, superseded requests dropped
# ---------------------------------------------------------------------------
class QueueFull(Exception):
    pass


class Superseded(Exception):
    pass


class StillRunning(Exception):
    pass


class Engine:
    """Runs engine work on dedicated threads (one for margins and losses, one
    for sensitivities, two for parsing), never on the server's thread pool,
    so the page, static files and /api/health never wait behind it. At most
    `queue_size` engine requests (and as many parse-only ones) are admitted at
    once; the next gets 503. A request with a supersede key is dropped (409)
    if a newer request with the same key arrives before it starts.

    A request still running after `answer_within_s` seconds is answered 503
    (`StillRunning`) and its computation goes on, holding its place in the queue
    until it ends; the same request again (same path, query and body) waits for
    that computation instead of starting another, and collects its result (the
    last `KEPT_RESULTS` finished ones are kept)."""

    def __init__(self, queue_size: int = QUEUE_SIZE, cache: service.ProgramCache | None = None,
                 answer_within_s: float = ANSWER_WITHIN_S):
        if queue_size < 1:
            raise ValueError(f"queue_size: {queue_size!r} is below 1")
        if not answer_within_s > 0:
            raise ValueError(f"answer_within_s: {answer_within_s!r} is not positive")
        self.queue_size = queue_size
        self.answer_within_s = answer_within_s
        self.still_running = 0  # requests answered 503 while their computation went on
        self._detached: dict[tuple, tuple[Any, set[int]]] = {}  # request -> future, tickets
        self.cache = cache or service.ProgramCache()
        self.margin_pool = ThreadPoolExecutor(1, thread_name_prefix="kinetic-jax-engine")
        self.sens_pool = ThreadPoolExecutor(1, thread_name_prefix="kinetic-jax-sensitivities")
        self.parse_pool = ThreadPoolExecutor(2, thread_name_prefix="kinetic-jax-parse")
        self.admitted = {"engine": 0, "parse": 0}
        self.refused = 0
        self.superseded = 0
        self._latest: dict[str, int] = {}
        self._tickets = 0

    def snapshot(self) -> dict:
        return {"queue_size": self.queue_size, "engine": self.admitted["engine"],
                "parse": self.admitted["parse"], "refused": self.refused,
                "superseded": self.superseded, "still_running": self.still_running,
                "answer_within_s": self.answer_within_s, "programs": self.cache.snapshot()}

    @contextlib.contextmanager
    def admit(self, lane: str):
        """Counts a request into `lane` (on the event loop); QueueFull if full."""
        if self.admitted[lane] >= self.queue_size:
            self.refused += 1
            raise QueueFull
        self.admitted[lane] += 1
        try:
            yield
        finally:
            self.admitted[lane] -= 1

    def ticket(self, key: str | None) -> int:
        self._tickets += 1
        if key:
            self._latest[key] = self._tickets
            if len(self._latest) > 4096:  # forget the oldest pages
                for k in list(self._latest)[:2048]:
                    del self._latest[k]
        return self._tickets

    def check_current(self, key: str | None, ticket: int | set[int]) -> None:
        """Superseded unless the latest request of page `key` is `ticket` (or one
        of them: the requests that joined one computation)."""
        tickets = ticket if isinstance(ticket, set) else {ticket}
        latest = self._latest.get(key) if key else None
        if latest is not None and latest not in tickets:
            self.superseded += 1
            raise Superseded

    async def parse(self, fn, *args):
        return await asyncio.wrap_future(self.parse_pool.submit(fn, *args))

    async def run(self, pool: ThreadPoolExecutor, kinds: tuple[str, ...], book: Book,
                  fn, *args, request: tuple, key: str | None = None, ticket: int = 0):
        """Runs `fn(book, *args)` on `pool`; the answer as for [`answer`][]."""
        tickets = {ticket}

        def job():
            self.check_current(key, tickets)
            with self.cache.running(service.program_key(k, book) for k in kinds) as cleared:
                if cleared:
                    logger.info("compile cache full: cleared JAX's in-memory caches")
                return fn(book, *args)

        return await self.answer(request, pool.submit(job), tickets)

    def joined(self, request: tuple, ticket: int):
        """``(future, tickets)`` of the computation already started for `request`
        (its tickets now include `ticket`), or None."""
        entry = self._detached.get(request)
        if entry is None:
            return None
        future, tickets = entry
        tickets.add(ticket)
        if future.done():
            del self._detached[request]  # collected
        return future, tickets

    async def answer(self, request: tuple, future, tickets: set[int]):
        """The computation's result, or `StillRunning` after `answer_within_s`
        (the computation detached under `request`, for the same request again)."""
        wrapped = asyncio.wrap_future(future)
        wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        try:
            return await asyncio.wait_for(asyncio.shield(wrapped), self.answer_within_s)
        except TimeoutError:
            self._detach(request, future, tickets)
            self.still_running += 1
            raise StillRunning from None

    def _detach(self, request: tuple, future, tickets: set[int]) -> None:
        if request in self._detached:
            return
        loop = asyncio.get_running_loop()
        self.admitted["engine"] += 1  # its place in the queue, until it ends
        self._detached[request] = (future, tickets)

        def ended(_):
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody to tell
                loop.call_soon_threadsafe(self._ended)

        future.add_done_callback(ended)

    def _ended(self) -> None:
        self.admitted["engine"] -= 1
        finished = [r for r, (f, _) in self._detached.items() if f.done()]
        for r in finished[:-KEPT_RESULTS]:
            del self._detached[r]

    def shutdown(self) -> None:
        for pool in (self.margin_pool, self.sens_pool, self.parse_pool):
            pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------
def _read_book_file(path: str | os.PathLike) -> tuple[Book, Source]:
    path = os.path.abspath(os.fspath(path))
    book, raw = kj.read_book_file(path, max_bytes=MAX_BOOK_FILE_BYTES)
    return book, Source(path, sha256(raw))


def _reference() -> tuple[Book, Source]:
    return service.reference_book(), Source(REFERENCE, sha256(service.reference_book_text()))


class Dashboard:
    """The server-side state of one dashboard: the source book, the saved
    state, the engine (its threads and queue)."""

    def __init__(self, book_path, state_path, limits: service.Limits, engine: Engine):
        self.book_path = book_path
        self.limits = limits
        self.engine = engine
        self.store = StateStore(state_path if state_path is not None else default_state_path())
        if book_path is not None:
            book, source = _read_book_file(book_path)  # BookError: the CLI exits 2
        else:
            book, source = _reference()
        service.check_limits(book, limits)
        self.source = source
        saved = self.store.load()
        if saved is not None:
            try:
                service.check_limits(saved.book, limits)
            except BookError as e:
                logger.warning("saved dashboard state is over the service's limits (%s); "
                               "starting from the source book", e)
                saved = None
        if saved is not None and (book_path is None or saved.source == source):
            self.state = saved
            self.source = saved.source
        else:
            self.state = State(book=book, ui={}, source=source)
        self.state_lock = threading.Lock()
        self.warm = threading.Event()
        self.warmup_error: str | None = None

    def source_book(self) -> Book:
        if self.source.path != REFERENCE:
            try:
                book, _ = _read_book_file(self.source.path)
                service.check_limits(book, self.limits)
                return book
            except BookError as e:
                logger.warning("source book %s is unusable (%s); using the reference book",
                               self.source.path, e)
        return service.reference_book()

    def warm_up(self) -> None:
        book = self.state.book
        try:
            for pool, kinds, fn, args in (
                (self.engine.margin_pool, ("margin",), service.margin_response,
                 (service.DEFAULT_BINS, False)),
                (self.engine.sens_pool, ("sensitivities",), service.sensitivities, ()),
            ):
                def job(kinds=kinds, fn=fn, args=args):
                    with self.engine.cache.running(service.program_key(k, book) for k in kinds):
                        return fn(book, *args)

                pool.submit(job).result()
        except Exception as e:  # noqa: BLE001 - reported by /api/health, never raised
            self.warmup_error = f"{type(e).__name__}: {e}"
            logger.warning("warm-up failed: %s", self.warmup_error)
        finally:
            self.warm.set()


def _parse_json_book(raw: bytes, limits: service.Limits) -> Book:
    book = kj.loads_book(raw, json_format=True, name="request body")
    service.check_limits(book, limits)
    return book


def decode_json_body(raw: bytes):
    """A request body as JSON, decoded as book files are ([`kj.loads_json`][]):
    UTF-8, nesting bounded before decoding, no key twice, integers of more than
    300 digits kept by their digit count (named later, never converted)."""
    return kj.loads_json(raw, name="request body")


def _parse_state_body(raw: bytes, limits: service.Limits) -> tuple[Book, dict]:
    data = decode_json_body(raw)
    if not isinstance(data, dict):
        raise BookError("body", "expected an object {\"book\": {...}, \"ui\": {...}}")
    unknown = set(data) - {"book", "ui"}
    if unknown:
        raise BookError(f"{sorted(unknown)[0]}", "unknown key (allowed: book, ui)")
    if "book" not in data:
        raise BookError("book", "missing")
    book = kj.parse_book(data["book"])
    service.check_limits(book, limits)
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
    limits: service.Limits | None = None,
    host: str | None = None,
    allowed_hosts: tuple[str, ...] = (),
    queue_size: int = QUEUE_SIZE,
    program_cache: int = 12,
    answer_within_s: float | None = None,
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
    - `limits`: the work one request may ask for (``service.Limits()``).
    - `host`, `allowed_hosts`: the Host header must name loopback, `host` or
      one of `allowed_hosts` (and ``$KINETIC_JAX_ALLOWED_HOSTS``).
    - `queue_size`: engine requests admitted at once; more get 503.
    - `program_cache`: compiled programs kept in memory (LRU).
    - `answer_within_s`: an engine request still running after this many seconds
      gets 503 with Retry-After while it goes on; the same request again collects
      the result (default `ANSWER_WITHIN_S`, read when the app is made).

    Raises [`BookError`][] if `book_path` is not a valid book.
    """
    limits = limits if limits is not None else service.Limits()
    engine = Engine(queue_size, service.ProgramCache(program_cache),
                    ANSWER_WITHIN_S if answer_within_s is None else answer_within_s)
    dash = Dashboard(book_path, state_path, limits, engine)
    counter = service.compile_counter()
    hosts = allowed_host_names(host, allowed_hosts)
    index_html = (STATIC / "index.html").read_bytes()
    docs_html = (STATIC / "docs.html").read_bytes()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if warmup:
            threading.Thread(target=dash.warm_up, name="kinetic-jax-warmup", daemon=True).start()
        else:
            dash.warm.set()
        yield
        engine.shutdown()

    app = FastAPI(
        title="kinetic_jax margin service",
        version=kj.__version__,
        description=(
            "Portfolio margin for binary prediction-market contracts. POST a book "
            "(SPEC.md §3 structure as JSON, `Content-Type: application/json`) to "
            "`/api/margin` to get the SPEC.md §4 report, the margin waterfall, the "
            "Monte-Carlo loss histogram with VaR and ES, and the sensitivities. Errors are "
            "JSON `{\"error\": {\"field\", \"detail\", \"message\", \"path\"}}`; bodies over "
            f"{max_body_bytes:,} bytes get 413; scenario counts other than "
            f"{', '.join(f'{x:,}' for x in limits.scenarios)} get 422; more than "
            f"{queue_size} engine requests at once get 503 with Retry-After. Requests from "
            "another origin, or to a Host the server does not answer to, are refused."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.dashboard = dash
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(SameOrigin, hosts=hosts)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body"))
        return error_response(422, field or "request", err.get("msg", "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        detail = {404: f"no such page or endpoint: {request.method} {request.url.path}",
                  405: f"{request.method} is not allowed on {request.url.path}"}.get(
                      exc.status_code, str(exc.detail))
        return error_response(exc.status_code, "", detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):  # pragma: no cover - last line of defence
        logger.exception("internal error")
        return error_response(500, "", f"internal error: {type(exc).__name__}")

    def failure(e: BaseException) -> JSONResponse:
        if isinstance(e, BookError):
            return book_error_response(e)
        if isinstance(e, QueueFull):
            return error_response(503, "", f"the engine is busy ({queue_size} requests "
                                  "queued); retry shortly",
                                  headers={"Retry-After": str(RETRY_AFTER_S)})
        if isinstance(e, Superseded):
            return error_response(409, "", "superseded by a newer request from the same page")
        if isinstance(e, StillRunning):
            return error_response(503, "", "still computing (a book of a new size or scenario "
                                  "count compiles the engine first); send the same request "
                                  "again to collect the result",
                                  headers={"Retry-After": str(RETRY_AFTER_S)})
        if isinstance(e, MemoryError):
            return error_response(500, "", "out of memory: lower the scenario count")
        logger.error("internal error", exc_info=e)
        text = str(e).splitlines()[0][:300] if str(e) else ""
        return error_response(500, "", f"internal error: {type(e).__name__}: {text}")

    async def parse_only(fn, *args) -> Any:
        """Runs `fn` (parsing, validation, saving) on the parse threads."""
        try:
            with engine.admit("parse"):
                return await engine.parse(fn, *args)
        except Exception as e:  # noqa: BLE001 - never let a traceback reach a user
            return failure(e)

    def _book_only(raw: bytes, limits):
        return _parse_json_book(raw, limits), ()

    async def compute(request: Request, kinds: tuple[str, ...], pool, fn, *args,
                      parse=_book_only) -> Any:
        """Admits the request, parses its body with `parse` (``(book, extra)``;
        default: a book alone), then runs `fn(book, *extra, *args)` on the engine
        thread `pool` (unless a newer request from the same page superseded it)."""
        try:
            with engine.admit("engine"):
                page = request.headers.get("x-kinetic-page", "")[:64]
                key = f"{page}:{request.url.path}" if page else None
                ticket = engine.ticket(key)
                raw = await request.body()
                ident = (request.url.path, request.url.query, repr(args), sha256(raw))
                started = engine.joined(ident, ticket)
                if started is not None:  # a retry: the computation it started goes on
                    return await engine.answer(ident, *started)
                book, extra = await engine.parse(parse, raw, limits)
                engine.check_current(key, ticket)
                return await engine.run(pool, kinds, book, fn, *extra, *args, key=key,
                                        ticket=ticket, request=ident)
        except Exception as e:  # noqa: BLE001 - never let a traceback reach a user
            return failure(e)

    # ---- the page --------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index():
        return Response(index_html, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return Response(docs_html, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js():
        path = resources.files("plotly") / "package_data" / "plotly.min.js"
        return FileResponse(str(path), media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    # ---- service -----------------------------------------------------------
    @app.get("/api/health", tags=["service"])
    async def health() -> dict:
        """Status, limits, the engine queue, JAX's trace/compile counters (a
        value change in the book must leave `compiles` unchanged) and the memory
        maps the process holds against the kernel's limit (null where unknown).
        Answered on the event loop: it never waits behind the engine."""
        return {
            "status": "ok",
            "version": kj.__version__,
            "warm": dash.warm.is_set(),
            "warmup_error": dash.warmup_error,
            "sensitivities": True,
            "jax": counter.snapshot(),
            "engine": engine.snapshot(),
            "memory_maps": _memory_maps(),
            "limits": {"max_body_bytes": max_body_bytes,
                       "max_scenarios": max(limits.scenarios),
                       "max_cells": limits.max_cells, "max_bins": service.MAX_BINS,
                       **limits.to_dict()},
            "state_path": str(dash.store.path),
            "source": dash.source.to_dict(),
        }

    @app.get("/api/config", tags=["service"])
    async def get_config() -> dict:
        """Enums, defaults, bounds and limits: the single source the page and the
        OpenAPI schema are built from (``kinetic_jax.Settings`` for the defaults)."""
        return config(limits, max_body_bytes)

    schema = book_schema(limits)
    book_body = json_body(schema, BOOK_EXAMPLE, "a book (SPEC.md §3 structure as JSON)")
    busy = (400, 409, 413, 415, 422, 500, 503)

    @app.post("/api/margin", tags=["service"], openapi_extra=book_body,
              responses=error_responses(*busy))
    async def margin(
        request: Request,
        bins: int = Query(service.DEFAULT_BINS, ge=1, le=service.MAX_BINS,
                          description="bins of the loss histogram"),
        sensitivities: bool = Query(True, description="include the sensitivities "
                                                      "(null if unavailable)"),
        histogram: bool = Query(True, description="include the loss histogram"),
    ):
        """Margins a book: `report` (SPEC.md §4, MarginReport.to_dict(), the object
        `kinetic-jax margin --json` prints: with `horizon_days` (null: to resolution),
        `as_of` and per contract `contracts` [{id, implied_probability, tau,
        resolved_by_horizon, stressed_marks, model_probability, effective_strike}],
        per underlying `underlyings` [{id, spot, vol, net_delta, hedge_quantity,
        hedge_lots, linear_exposure, pnl_curve}], `capped` (false: `worst_case_loss`
        null) and `linear_notional`, SPEC-horizon.md §6.7, §6.9), `underlyings` (per
        underlying its PnL curve by leg, `pnl_binaries` and `pnl_linear`, its
        `portfolio_value` and the ids of its `linear` and `binaries` contracts),
        `waterfall`, `histogram` (the simulated loss distribution of the book with
        `var` and `es` of the same draws), `sensitivities`, `hierarchy`, `timing`."""
        kinds = ("margin", "sensitivities") if sensitivities else ("margin",)
        return await compute(request, kinds, engine.margin_pool, service.margin_response,
                             bins, sensitivities, histogram)

    @app.post("/api/losses", tags=["service"], openapi_extra=book_body,
              responses=error_responses(*busy))
    async def losses(
        request: Request,
        bins: int = Query(service.DEFAULT_BINS, ge=1, le=service.MAX_BINS,
                          description="bins of the loss histogram"),
    ):
        """The histogram of the book's simulated losses (``kinetic_jax.margin_with_losses``,
        the draws of the margin call), with the report's VaR (`var`) and ES
        (`es`, the base) of the same draws."""
        return await compute(request, ("margin",), engine.margin_pool, service.losses_response,
                             bins)

    @app.post("/api/sensitivities", tags=["service"], openapi_extra=book_body,
              responses=error_responses(*busy))
    async def sensitivities_endpoint(request: Request):
        """``kinetic_jax.sensitivities(book).to_dict()``: d margin / d quantity and
        d price per position, the Euler allocation, d margin / d rho per node and
        d margin / d loading per cluster. Runs on its own engine thread, so it
        never holds up a margin."""
        return await compute(request, ("sensitivities",), engine.sens_pool,
                             lambda book: {"sensitivities": service.sensitivities(book)})

    sessions = what_if_service.Sessions()
    what_if_body = json_body(
        {"title": "WhatIf", "type": "object", "required": ["book", "trades"],
         "additionalProperties": False,
         "properties": {
             "book": schema,
             "trades": {"type": "array", "maxItems": limits.max_positions, "items": {
                 "type": "object", "additionalProperties": False,
                 "required": ["contract", "quantity"],
                 "properties": {"contract": {"type": "string"},
                                "quantity": {"type": "number",
                                             "description": "signed quantity traded, added "
                                                            "to the position"}}}},
             "new_contracts": {**schema["properties"]["contracts"],
                               "description": "contracts new to the book (same keys as "
                                              "book.contracts), tradable in `trades`"}}},
        {"book": BOOK_EXAMPLE, "trades": [
            {"contract": BOOK_EXAMPLE["positions"][0]["contract"], "quantity": 100}]},
        "a book and trades on it")

    @app.post("/api/what-if", tags=["service"], openapi_extra=what_if_body,
              responses=error_responses(*busy))
    async def what_if(request: Request):
        """Pre-trade what-if (``kinetic_jax.margin_session``): `what_if` (margin
        before and after, `incremental`, binding before and after, ES per cluster
        before and after), the traded book's `report` and `waterfall`, `timing`.
        The book's simulation is kept (an LRU of 4 books), so what-ifs on the same
        book do not simulate again; the figures equal /api/margin of the traded
        book."""
        def parse(raw: bytes, limits):
            book, trades = what_if_service.parse_what_if_body(raw, limits)
            return book, (trades,)

        return await compute(request, ("what-if",), engine.margin_pool, sessions.response,
                             parse=parse)

    @app.post("/api/validate", tags=["service"], openapi_extra=book_body,
              responses=error_responses(400, 413, 415, 422, 503))
    async def validate(request: Request):
        """Checks a book without computing: the normalised book, or the field error."""
        raw = await request.body()
        return await parse_only(
            lambda: {"ok": True, "book": kj.book_to_dict(_parse_json_book(raw, limits))})

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
         "properties": {"book": schema,
                        "ui": {"type": "object", "description": "page settings (scalars)"}}},
        {"book": BOOK_EXAMPLE, "ui": {"auto": True, "bins": 60}},
        "the book and the page settings",
    )

    @app.put("/api/state", tags=["state"], openapi_extra=state_body,
             responses=error_responses(400, 403, 413, 415, 422, 500, 503))
    async def put_state(request: Request):
        """Validates and saves the book and page settings (atomic write)."""
        raw = await request.body()

        def run():
            book, ui = _parse_state_body(raw, limits)
            with dash.state_lock:
                try:
                    dash.state = dash.store.save(State(book=book, ui=ui, source=dash.source))
                except OSError as e:
                    logger.error("cannot save the dashboard state: %s", e)
                    return error_response(500, "", f"cannot save the state to "
                                          f"{dash.store.path}: {e.strerror or e}")
                return state_payload(dash.state)

        return await parse_only(run)

    @app.post("/api/state/reset", tags=["state"],
              responses=error_responses(403, 415, 500, 503))
    async def reset_state():
        """Discards the edits: back to the source book (and default page settings).
        Takes ``Content-Type: application/json`` (an empty body is fine)."""

        def run():
            with dash.state_lock:
                dash.state = dash.store.save(State(book=dash.source_book(), ui={},
                                                   source=dash.source))
                return state_payload(dash.state)

        return await parse_only(run)

    toml_response = {200: {"content": {"application/toml": {}},
                           "description": "the book as TOML"}}

    @app.get("/api/export", tags=["state"], response_class=Response, responses=toml_response)
    def export_saved():
        """The saved book as a TOML book file."""
        return _toml_response(dash.state.book)

    @app.post("/api/export", tags=["state"], openapi_extra=book_body, response_class=Response,
              responses={**toml_response, **error_responses(400, 413, 415, 422, 503)})
    async def export_book(request: Request):
        """A book (JSON) as a TOML book file (written with tomli_w)."""
        raw = await request.body()
        return await parse_only(lambda: _toml_response(_parse_json_book(raw, limits)))

    @app.post(
        "/api/import", tags=["state"], responses=error_responses(400, 413, 415, 422, 503),
        openapi_extra={"requestBody": {"required": True, "description": "a TOML book file",
                                       "content": {"application/toml": {
                                           "schema": {"type": "string"}}}}},
    )
    async def import_book(request: Request):
        """Reads a TOML book file (``Content-Type: application/toml``, validated with
        ``kinetic_jax.loads_book``) and returns it as JSON. Nothing is saved until
        the page saves it."""
        raw = await request.body()

        def run():
            book = kj.loads_book(raw, name="imported file")
            service.check_limits(book, limits)
            return {"book": kj.book_to_dict(book)}

        return await parse_only(run)

    return app


def _memory_maps() -> dict | None:
    """`kinetic_jax.memory_maps` for `/api/health`: ``{"count", "limit"}``, or
    None where the platform does not say."""
    maps = kj.memory_maps()
    return None if maps is None else {"count": maps[0], "limit": maps[1]}


def _toml_response(book: Book) -> Response:
    return Response(_toml(book), media_type="application/toml",
                    headers={"Content-Disposition": 'attachment; filename="book.toml"'})


def run(book_path=None, state_path=None, *, host: str = "127.0.0.1", port: int = 8765,
        open_browser: bool = False, log_level: str = "warning") -> None:
    """Starts the dashboard with uvicorn (blocking) and prints its URL."""
    import uvicorn

    kj.enable_compilation_cache()  # warm-up and recomputes reuse earlier runs' compiles
    app = create_app(book_path, state_path, warmup=True, host=host)
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


