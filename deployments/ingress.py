"""The OpenAI-compatible front door: a thin FastAPI shell on Ray Serve around one `OpenAIService`.

Everything a request goes through is in the core (`serving.service`, `serving.pipeline`);
this module reads HTTP, maps errors to responses (`serving.errors.to_openai_error`, the one
place), counts requests, and hands Ray Serve the load figures its autoscaling policy reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.api import ERROR_RESPONSES, ChatCompletionRequest, CompletionRequest, RouteTrace
from serving.compose import Parts, build_service
from serving.dashboard import LiveStats, asset, page_state, quality_report
from serving.errors import (
    EngineUnavailableError,
    InferenceOptimizerError,
    InvalidRequestError,
    NotFoundError,
    RequestTooLargeError,
    from_http_status,
    to_openai_error,
)
from serving.load import CascadeStats
from serving.metrics import MetricsTee, ServeMetrics
from serving.priority import Priority
from serving.service import parse_request, selector_from_query, to_json
from serving.tenancy import Caller

logger = logging.getLogger("ray.serve")
ROUTE_HEADER = "x-infopt-route"
HEALTH_TIMEOUT_S = 10.0
ADMIN_TIMEOUT_S = 30.0

app = FastAPI(title="Inference Optimizer", description="OpenAI-compatible tiered LLM serving on Ray Serve.")
# Request models whose JSON schemas the OpenAPI document carries (the endpoints read the raw body themselves,
# so that every parse error becomes an OpenAI error; FastAPI would not see the models otherwise).
_BODY_MODELS: list[type[BaseModel]] = []


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring `model` as the endpoint's JSON request body."""
    _BODY_MODELS.append(model)
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


# What DELETE /v1/cache reads from its query string (`selector_from_query`), declared for clients and fuzzers.
INVALIDATION_QUERY = {"parameters": [
    _query("namespace", {"type": "string"}, "Entries of this namespace."),
    _query("model", {"type": "string"}, "Entries answered for this model."),
    _query("tag", {"type": "string"}, "Entries carrying this tag."),
    _query("older_than_s", {"type": "number", "minimum": 0}, "Entries admitted more than this many seconds ago."),
    _query("all", {"type": "string", "enum": ["true"]}, "Every entry (required when nothing else is named)."),
]}


def _with_priority_header(extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` with the priority header declared (its name is configurable; this is the default)."""
    header = {"name": "x-infopt-priority", "in": "header", "required": False, "schema": {"type": "string"},
              "description": "The request's priority class (e.g. interactive, batch), within its tenant's."}
    return {**extra, "parameters": [header]}


def _openapi() -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in _BODY_MODELS:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = schema
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]


class ServiceJSONResponse(JSONResponse):
    """Every JSON body the ingress sends: non-finite floats become null (`serving.service.to_json`) instead of
    failing the response."""

    def render(self, content: Any) -> bytes:
        return to_json(content).encode("utf-8")


def error_response(exc: BaseException) -> JSONResponse:
    """The OpenAI-style error response for `exc` (mapping in `serving.errors`)."""
    status, body = to_openai_error(exc)
    route = getattr(exc, "route", None)
    headers = {ROUTE_HEADER: route.tier or "none"} if isinstance(route, RouteTrace) else {}
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers["retry-after"] = str(max(1, round(retry_after)))
    return ServiceJSONResponse(body, status_code=status, headers=headers or None)


# Safety nets for anything raised outside the endpoints below (they handle their own errors).
@app.exception_handler(InferenceOptimizerError)
async def _known_error(request: Request, exc: InferenceOptimizerError) -> JSONResponse:
    return error_response(exc)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own 404/405 (an unknown path or method) in OpenAI's error shape."""
    return error_response(from_http_status(exc.status_code, str(exc.detail)))


@app.exception_handler(Exception)
async def _unknown_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(exc)


def _bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def _json_body(request: Request, limit: int) -> Any:
    """The decoded JSON body; a body over `limit` bytes is refused before it is read whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLargeError(f"the request body is {declared} bytes, above this service's limit of {limit}")
    raw = b""
    async for part in request.stream():
        raw += part
        if len(raw) > limit:
            raise RequestTooLargeError(f"the request body is above this service's limit of {limit} bytes")
    if not raw:
        raise InvalidRequestError("the request body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    """Serves OpenAI requests with the service built from the injected `Parts` (`serving.compose`)."""

    def __init__(self, parts: Parts) -> None:
        config = parts.config
        # The live page's window (`serving.dashboard`): a metrics sink and, below, an observer of answers.
        self.live = LiveStats(config.api.dashboard.window_s, config.api.dashboard.bucket_s,
                              config.api.dashboard.max_requests)
        self.metrics = MetricsTee(ServeMetrics(), self.live)
        # Arrivals per priority class, cache hits, Validator share and time: the forecast
        # (exported as metrics) and the Validator's cascade autoscaling read these.
        self.load = CascadeStats(config.load, metrics=self.metrics)
        self._exporter: asyncio.Task[None] | None = None
        self.cache = parts.cache
        self.config = config
        self.service = build_service(parts, metrics=MetricsTee(self.metrics, self.load))
        self.service.pipeline.observers.append(self.live)  # after the ledger: it reads the counterfactual
        self._replicas: tuple[float, dict[str, Any] | None] = (0.0, None)
        # Open (no keys) or not, said once at start: an open service should be a choice, not an accident.
        logger.warning(self.service.tenancy.describe())

    def _respond(self, body: dict[str, Any], trace: RouteTrace) -> JSONResponse:
        self.metrics.request(trace.tier or "none", 200)
        return ServiceJSONResponse(body, headers={ROUTE_HEADER: trace.tier or "none"})

    def _stream(self, events: Any, trace: RouteTrace) -> StreamingResponse:
        self.metrics.request(trace.tier or "none", 200)
        return StreamingResponse(
            events, media_type="text/event-stream",
            headers={ROUTE_HEADER: trace.tier or "none", "cache-control": "no-cache"},
        )

    async def _answer(self, work: Awaitable[Response]) -> Response:
        """Await an endpoint's work; errors become OpenAI errors here, where they are counted."""
        try:
            return await work
        except InferenceOptimizerError as exc:
            response = error_response(exc)
        except Exception as exc:
            logger.exception("unexpected error")
            response = error_response(exc)
        self.metrics.request("error", response.status_code)
        return response

    async def _caller(self, request: Request) -> tuple[Caller, Priority]:
        """Who is calling and at which priority (a 401 or a 429 before the body is read), counted as one arrival
        of its class."""
        caller, priority = await self.service.admit(_bearer_token(request),
                                                    request.headers.get(self.config.priority.priority_header))
        self.load.arrival(priority.name)
        if self._exporter is None:
            self._exporter = asyncio.get_running_loop().create_task(self._export_forecasts())
        return caller, priority

    async def _export_forecasts(self) -> None:
        """Refresh the forecast and audit gauges once per forecast step, also while no request arrives (rates decay)."""
        while True:
            try:
                self.load.export()
                if self.service.pipeline.auditor is not None:  # gauges Ray drops unless they are set again
                    self.service.pipeline.auditor.export()
            except Exception:  # a metrics hiccup must not stop the loop
                logger.exception("exporting the arrival forecast or the audit's estimates failed")
            await asyncio.sleep(self.config.load.interval_s)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Ray Serve's custom autoscaling metrics hook: the cascade signals (`serving.load.autoscaling`).

        Ray calls it only when this deployment has an autoscaling config, which `build_app`
        gives it when `load.autoscaling.enabled`; the application's policy
        (`CascadeApplicationPolicy`) reads the figures to scale the Validator.
        """
        return self.load.autoscaling_stats()

    async def _chat(self, request: Request) -> Response:
        caller, priority = await self._caller(request)
        req = parse_request(ChatCompletionRequest, await _json_body(request, self.config.api.max_body_bytes))
        if req.stream:
            return self._stream(*await self.service.chat_stream(req, priority, caller))
        return self._respond(*await self.service.chat(req, priority, caller))

    async def _completion(self, request: Request) -> Response:
        caller, priority = await self._caller(request)
        req = parse_request(CompletionRequest, await _json_body(request, self.config.api.max_body_bytes))
        if req.stream:
            return self._stream(*await self.service.completion_stream(req, priority, caller))
        return self._respond(*await self.service.completion(req, priority, caller))

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES,
              openapi_extra=_with_priority_header(request_body(ChatCompletionRequest)))
    async def chat_completions(self, request: Request) -> Response:
        return await self._answer(self._chat(request))

    @app.post("/v1/completions", responses=ERROR_RESPONSES,
              openapi_extra=_with_priority_header(request_body(CompletionRequest)))
    async def completions(self, request: Request) -> Response:
        return await self._answer(self._completion(request))

    # -- cache administration ---------------------------------------------------------------

    def _cache_admin(self, request: Request) -> tuple[Any, Caller]:
        """The cache, once the caller has shown an admin key (on a service with keys)."""
        caller = self._admin(request)
        if self.cache is None:
            raise InvalidRequestError("the semantic cache is not enabled in this deployment (cache.enabled)")
        return self.cache, caller

    async def _invalidate(self, request: Request) -> Response:
        cache, caller = self._cache_admin(request)
        selector = selector_from_query(dict(request.query_params))
        deleted = await asyncio.wait_for(cache.invalidate(selector), ADMIN_TIMEOUT_S)
        # Who deleted what stays on record (the Ingress's log: Ray Serve keeps it per replica).
        logger.warning("cache invalidation by %s: %s -> %d entries deleted", caller.label, selector, deleted)
        return ServiceJSONResponse({"object": "cache.invalidation", "deleted": deleted})

    async def _stats(self, request: Request) -> Response:
        cache, _ = self._cache_admin(request)
        stats = await asyncio.wait_for(cache.stats(), ADMIN_TIMEOUT_S)
        return ServiceJSONResponse({"object": "cache.stats", **stats})

    @app.delete("/v1/cache", responses=ERROR_RESPONSES, openapi_extra=INVALIDATION_QUERY)
    async def cache_invalidate(self, request: Request) -> Response:
        return await self._answer(self._invalidate(request))

    @app.get("/v1/cache/stats", responses=ERROR_RESPONSES)
    async def cache_stats(self, request: Request) -> Response:
        return await self._answer(self._stats(request))

    # -- quality and cost -------------------------------------------------------------------

    def _admin(self, request: Request) -> Caller:
        """The caller of an admin endpoint: 401 without a valid key, 403 for a tenant's key."""
        caller = self.service.tenancy.authenticate(_bearer_token(request))
        self.service.tenancy.require_admin(caller)
        return caller

    async def _ledger(self, request: Request) -> Response:
        self._admin(request)
        return ServiceJSONResponse({"object": "ledger", **self.service.pipeline.ledger.totals()})

    async def _quality(self, request: Request) -> Response:
        self._admin(request)
        return ServiceJSONResponse({"object": "quality", **quality_report(self.service.pipeline)})

    @app.get("/v1/ledger", responses=ERROR_RESPONSES)
    async def ledger(self, request: Request) -> Response:
        return await self._answer(self._ledger(request))

    @app.get("/v1/quality", responses=ERROR_RESPONSES)
    async def quality(self, request: Request) -> Response:
        return await self._answer(self._quality(request))

    # -- the live page ---------------------------------------------------------------------

    def _dashboard_on(self) -> None:
        if not self.config.api.dashboard.enabled:
            raise NotFoundError("the live page is off in this deployment (api.dashboard.enabled)")

    async def _replica_states(self) -> dict[str, Any] | None:
        """Replicas per deployment by state, from Serve's controller (at most every 5 s; None when it cannot say)."""
        at, value = self._replicas
        now = time.monotonic()
        if now - at < 5.0:
            return value
        try:
            status = await asyncio.wait_for(asyncio.to_thread(serve.status), 5.0)
            value = {app_name: {name: {str(state.value if hasattr(state, "value") else state): n
                                       for state, n in d.replica_states.items()}
                                for name, d in a.deployments.items()}
                     for app_name, a in status.applications.items()}
        except Exception as exc:  # reported as unknown, never fatal to the page
            logger.warning("the live page could not read the replicas: %s", exc)
            value = None
        self._replicas = (now, value)
        return value

    async def _dashboard_state(self, request: Request) -> Response:
        self._dashboard_on()
        self._admin(request)
        return ServiceJSONResponse(await page_state(
            self.service.pipeline, self.live, profile=self.config.profile,
            refresh_s=self.config.api.dashboard.refresh_s, cache=self.cache,
            cache_timeout_s=self.config.cache.timeout_s, replicas=await self._replica_states()))

    @app.get("/v1/dashboard/state", responses=ERROR_RESPONSES)
    async def dashboard_state(self, request: Request) -> Response:
        """What the live page draws (JSON): the window's route mix, savings, latency, the audit, cache, queue and
        replicas."""
        return await self._answer(self._dashboard_state(request))

    async def _asset(self, name: str) -> Response:
        self._dashboard_on()
        found = asset(name)
        if found is None:
            raise NotFoundError(f"no such file of the live page: {name}")
        content, media_type = found
        return Response(content, media_type=media_type, headers={"cache-control": "no-cache"})

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard(self) -> Response:
        return await self._answer(self._asset("index.html"))

    @app.get("/dashboard/{name}", include_in_schema=False)
    async def dashboard_asset(self, name: str) -> Response:
        return await self._answer(self._asset(name))

    async def _models(self, request: Request) -> Response:
        self.service.tenancy.authenticate(_bearer_token(request))
        return ServiceJSONResponse(self.service.list_models())

    @app.get("/v1/models", responses=ERROR_RESPONSES)
    async def models(self, request: Request) -> Response:
        return await self._answer(self._models(request))

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        try:
            health = await asyncio.wait_for(self.service.check_health(), HEALTH_TIMEOUT_S)
        except TimeoutError:
            raise EngineUnavailableError(f"engines did not answer a health check within {HEALTH_TIMEOUT_S:g} s") \
                from None
        health["calibration"] = self.service.pipeline.escalation.version
        health["auth"] = "open" if self.service.tenancy.is_open else "keys"
        if self.cache is not None:
            # Reported, never fatal: requests bypass a cache that is down.
            try:
                await asyncio.wait_for(self.cache.stats(), self.config.cache.timeout_s)
                health["cache"] = "ok"
            except Exception as exc:
                health["cache"] = f"unavailable ({type(exc).__name__})"
        return health
