"""The web app's HTTP API (FastAPI) and its static page, on one `Analyzer` (one model per server).

Every analysis endpoint answers with the library's own pydantic result; requests are `mechscope.web.schemas`.
The model's calls are serialised by the analyzer's lock and run in worker threads, so the event loop keeps
serving (progress events, cancels) while the model computes. Long requests (patching, ablation, the weight
census) also run as jobs with server-sent progress and cancellation (`mechscope.web.jobs`).

Safe by default: every reply carries a Content-Security-Policy that allows only the page's own files (no
inline script, no CDN); with an access token (servers bound beyond loopback), every request must carry it
(a header, ``?token=``, or the cookie the page gets when it is opened with its token); uploads are
size-limited and parsed as safetensors or JSON only; bad input gets a 4xx with
``{"error": "<one line>"}`` and a failure a 500 of the same shape, never a stack trace.

Examples:
    >>> from fastapi.testclient import TestClient
    >>> import mechscope as ms
    >>> client = TestClient(create_app(ms.Analyzer.from_pretrained("toy"), name="toy"))
    >>> grid = client.post("/api/lens/grid", json={"prompt": "The capital of France is"}).json()
    >>> grid["cells"][-1][-1]["top"][0]["token"]
    ' Paris'
    >>> client.post("/api/lens/grid", json={"prompt": ""}).json()
    {'error': 'prompt: String should have at least 1 character'}
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from mechscope.api import moe_tasks, tasks
from mechscope.errors import MechscopeError
from mechscope.web import schemas
from mechscope.web.directions import Directions, UnknownDirection, UnsupportedUpload, parse_upload
from mechscope.web.jobs import FINAL, Job, Jobs, UnknownJob
from mechscope.web.snippets import snippet

if TYPE_CHECKING:
    from mechscope.api.analyzer import Analyzer
    from mechscope.core.lm import LanguageModel

#: The largest upload accepted by default (bytes); `mechscope ui --max-upload-mb` changes it.
MAX_UPLOAD = 64 * 2**20
#: The largest JSON request body (bytes).
MAX_JSON = 2**20
TOKEN_HEADER = "X-Mechscope-Token"
#: Set on the page's reply when it was opened with the right ``?token=``, so that what the page loads by
#: itself (its scripts, its stylesheet), which cannot carry a header, still carries the token.
TOKEN_COOKIE = "mechscope_token"
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
EVENT_POLL_S = 0.05  # how often a progress stream looks at its job


def static_folder() -> Any:
    """The packaged front end (``mechscope/web/static``)."""
    return resources.files("mechscope.web") / "static"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def _validation_message(errors: Any) -> str:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path"))
    message = str(first.get("msg", "invalid request"))
    return f"{where}: {message}" if where else message


def create_app(
    analyzer: Analyzer,
    *,
    name: str,
    token: str | None = None,
    max_upload_bytes: int = MAX_UPLOAD,
) -> FastAPI:
    """The web app for ``analyzer``'s model.

    Args:
        name: how the model is called in the page and in "copy as Python" (what ``mechscope ui -m`` got).
        token: when set, every request must carry it (header ``X-Mechscope-Token`` or ``?token=``).
        max_upload_bytes: the largest direction file accepted.
    """
    # no /docs: FastAPI's docs page loads its scripts from a CDN, which the page's policy (and offline use) forbid
    app = FastAPI(title="mechscope", docs_url=None, redoc_url=None, openapi_url=None)
    jobs = Jobs(analyzer)
    directions = Directions()
    recipes: dict[str, list[str]] = {}  # direction id -> the Python lines that rebuild it

    async def run(task: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await analyzer.aio.run(task, *args, **kwargs)

    _install_guards(app, token)
    _install_errors(app)

    # --- the page ----------------------------------------------------------------------------------------

    folder = static_folder()

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        index = folder / "index.html"
        if not index.is_file():
            return _error(404, "the front end is not installed (mechscope/web/static/index.html is missing)")
        return FileResponse(str(index), media_type="text/html")

    if folder.is_dir():
        app.mount("/static", StaticFiles(directory=str(folder)), name="static")

    # --- the model -----------------------------------------------------------------------------------------

    @app.get("/api/model")
    async def model() -> schemas.ModelSummary:
        lm = await asyncio.to_thread(lambda: analyzer.lm)
        arch = lm.arch
        return schemas.ModelSummary(
            name=name,
            source=str(lm.source),
            family=arch.family,
            n_layers=arch.n_layers,
            n_heads=arch.n_heads,
            d_model=arch.d_model,
            vocab_size=arch.vocab,
            is_moe=arch.is_moe,
            n_experts=arch.n_experts if arch.is_moe else None,
            token_required=token is not None,
        )

    # --- analyses ----------------------------------------------------------------------------------------

    @app.post("/api/lens/grid")
    async def lens_grid(body: schemas.LensGridRequest) -> Any:
        return await run(tasks.lens_grid, body.prompt, top_k=body.top_k)

    @app.post("/api/lens")
    async def lens(body: schemas.LensRequest) -> Any:
        results = await run(tasks.lens, body.prompt, top_k=body.top_k, track=body.track)
        return results[0]

    @app.post("/api/attention")
    async def attention(body: schemas.AttentionRequest) -> Any:
        return await run(tasks.attention, body.prompt, body.layer, with_roles=True)

    @app.get("/api/heads")
    async def heads() -> Any:
        return await run(tasks.heads)

    @app.post("/api/patch")
    async def patch(body: schemas.PatchRequest) -> Any:
        return await run(_patch, body)

    @app.post("/api/patch/cell")
    async def patch_cell(body: schemas.PatchCellRequest) -> Any:
        options = {"layer": body.layer, "position": body.position, "site": body.site, "top_k": body.top_k}
        return await run(tasks.patch_cell, body.clean, body.corrupted, **options)

    @app.post("/api/ablate")
    async def ablate(body: schemas.AblateRequest) -> Any:
        return await run(_ablate, body)

    @app.get("/api/weights")
    async def weights() -> Any:
        return await run(tasks.weights)

    @app.get("/api/moe/info")
    async def moe_info() -> Any:
        return await run(_moe_only(moe_tasks.moe_info))

    @app.post("/api/moe/trace")
    async def moe_trace(body: schemas.MoETraceRequest) -> Any:
        return await run(_moe_only(moe_tasks.moe_trace), body.prompt)

    @app.post("/api/moe/utilization")
    async def moe_utilization(body: schemas.MoEUtilizationRequest) -> Any:
        return await run(_moe_only(moe_tasks.moe_utilization), body.prompts)

    # --- steering ------------------------------------------------------------------------------------------

    @app.get("/api/directions")
    async def list_directions() -> list[schemas.DirectionInfo]:
        return directions.list()

    @app.post("/api/directions/contrast")
    async def contrast(body: schemas.ContrastRequest) -> schemas.DirectionInfo:
        def make(lm: LanguageModel) -> Any:
            from mechscope.core.layers import resolve_layer

            layer = resolve_layer(body.layer, lm.arch.n_layers)
            return layer, tasks.directions(lm, body.positive, body.negative, layers=[layer])[layer]

        layer, direction = await run(make)
        info = directions.add(direction, f"contrast, layer {layer}")
        recipes[info.id] = [
            f"direction = analyzer.directions({body.positive!r}, {body.negative!r}, layers=[{layer}])[{layer}]"
        ]
        return info

    @app.post("/api/directions/upload")
    async def upload(request: Request, name: str = "direction.safetensors", force: bool = False) -> Any:
        data = await _read_limited(request, max_upload_bytes)
        direction = await run(parse_upload, name, data, force=force)
        info = directions.add(direction, name)
        recipes[info.id] = [
            "from mechscope.core.direction import Direction",
            f"direction = Direction.load({name!r}, analyzer.lm{', force=True' if force else ''})",
        ]
        return info

    @app.post("/api/steer")
    async def steer(body: schemas.SteerRequest) -> Any:
        direction = directions.get(body.direction)
        coefficients = [0.0, body.coefficient]
        return await run(tasks.steer, body.prompt, direction, coefficients, max_new_tokens=body.max_new_tokens)

    # --- "copy as Python" ----------------------------------------------------------------------------------

    @app.post("/api/python")
    async def python(body: schemas.PythonRequest) -> schemas.PythonCode:
        recipe = recipes.get(str(body.request.get("direction"))) if body.view == "steering" else None
        return schemas.PythonCode(code=snippet(name, body.view, body.request, recipe=recipe))

    # --- jobs ----------------------------------------------------------------------------------------------

    @app.post("/api/jobs")
    async def start_job(body: schemas.JobRequest) -> schemas.JobStatus:
        return jobs.start(body.kind, _job_work(body)).status()

    @app.get("/api/jobs/{job_id}")
    async def job_status(job_id: str) -> schemas.JobStatus:
        return jobs.get(job_id).status()

    @app.delete("/api/jobs/{job_id}")
    async def cancel_job(job_id: str) -> schemas.JobStatus:
        return jobs.cancel(job_id).status()

    @app.get("/api/jobs/{job_id}/events")
    async def job_events(job_id: str) -> StreamingResponse:
        job = jobs.get(job_id)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(_events(job), media_type="text/event-stream", headers=headers)

    return app


def _patch(lm: LanguageModel, body: schemas.PatchRequest) -> Any:
    return tasks.patch(lm, body.clean, body.corrupted, correct=body.correct, wrong=body.wrong, site=body.site)


def _ablate(lm: LanguageModel, body: schemas.AblateRequest) -> Any:
    return tasks.ablate(lm, body.prompt, component=body.component, method=body.method, target=body.target)


def _moe_only(task: Callable[..., Any]) -> Callable[..., Any]:
    """``task`` with a one-line error on a dense model (the page greys the view out; the API says why)."""

    def checked(lm: LanguageModel, *args: Any, **kwargs: Any) -> Any:
        if not lm.arch.is_moe:
            from mechscope.errors import MoEError

            raise MoEError(f"{lm.arch.family} has no experts; the MoE view needs a mixture-of-experts model")
        return task(lm, *args, **kwargs)

    return checked


def _job_work(body: schemas.JobRequest) -> Callable[[LanguageModel], BaseModel]:
    """What a job of ``body.kind`` computes (its request validated now, so a bad one fails before it starts)."""
    if body.kind == "patch":
        patch_body = schemas.PatchRequest.model_validate(body.request)
        return lambda lm: _patch(lm, patch_body)
    if body.kind == "ablate":
        ablate_body = schemas.AblateRequest.model_validate(body.request)
        return lambda lm: _ablate(lm, ablate_body)
    schemas.Request.model_validate(body.request)  # these take no options
    if body.kind == "heads":
        return tasks.heads
    return _weights_job


def _weights_job(lm: LanguageModel) -> BaseModel:
    """The weight census as one pydantic value (a job's result is one; the census is a list of rows)."""
    from pydantic import RootModel

    from mechscope.weights.export import ParamRow

    return RootModel[list[ParamRow]](tasks.weights(lm))


def _sse(event: str, data: str) -> str:
    return f"event: {event}\ndata: {data}\n\n"


async def _events(job: Job) -> AsyncIterator[str]:
    """Server-sent events of ``job``: progress while it runs, then its result, error or cancellation."""
    last: tuple[Any, ...] | None = None
    while True:
        state = (job.state, job.done, job.total)
        if state != last:
            last = state
            yield _sse("progress", json.dumps({"done": job.done, "total": job.total, "state": job.state}))
        if job.state in FINAL:
            break
        await asyncio.sleep(EVENT_POLL_S)
    if job.state == "done" and job.result is not None:
        yield _sse("result", job.result.model_dump_json())
    elif job.state == "failed":
        yield _sse("error", json.dumps({"error": job.error}))
    else:
        yield _sse("cancelled", "{}")


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it passes ``limit`` bytes (never read whole first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, _too_big(limit))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, _too_big(limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_big(limit: int) -> str:
    return f"the upload is over the {limit / 2**20:g} MiB limit; start the server with a larger --max-upload-mb"


def _install_guards(app: FastAPI, token: str | None) -> None:
    """The access token, the body size limit, the security headers and the server's timing on every reply."""

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        if token is not None:
            given = (
                request.headers.get(TOKEN_HEADER)
                or request.query_params.get("token")
                or request.cookies.get(TOKEN_COOKIE)
                or ""
            )
            if not secrets.compare_digest(given.encode(), token.encode()):
                response: Response = _error(
                    401,
                    "this server needs its access token: open the URL it printed (with ?token=...) "
                    f"or send the {TOKEN_HEADER} header",
                )
                return _secured(response, started)
        declared = request.headers.get("content-length", "")
        is_upload = request.url.path == "/api/directions/upload"
        if not is_upload and declared.isdigit() and int(declared) > MAX_JSON:
            return _secured(_error(413, f"the request body is over {MAX_JSON // 1024} KiB"), started)
        response = await call_next(request)
        if token is not None and request.url.path == "/":
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
        return _secured(response, started)


def _secured(response: Response, started: float) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
    return response


def _install_errors(app: FastAPI) -> None:
    """Every error as ``{"error": "<one line>"}``: 4xx for bad input, 500 (no stack trace) for a bug."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(error.errors()))

    @app.exception_handler(ValidationError)
    async def invalid_inner(request: Request, error: ValidationError) -> JSONResponse:
        return _error(422, _validation_message(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        detail = error.detail if isinstance(error.detail, str) else "request refused"
        if error.status_code == 404 and detail == "Not Found":
            detail = f"no such page or endpoint: {request.url.path}"
        if error.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return _error(error.status_code, detail)

    @app.exception_handler(MechscopeError)
    async def bad_input(request: Request, error: MechscopeError) -> JSONResponse:
        status = 400
        if isinstance(error, UnknownJob | UnknownDirection):
            status = 404
        elif isinstance(error, UnsupportedUpload):
            status = 415
        return _error(status, str(error))

    @app.exception_handler(Exception)
    async def failure(request: Request, error: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(error).__name__}): {error}")
