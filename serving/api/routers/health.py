"""Liveness, readiness and Prometheus metrics (never behind an API key)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from serving.api.dependencies import ReadModelsDep
from serving.api.openapi import problem_responses
from serving.api.problems import problem

router = APIRouter(tags=["health"])


@router.get("/healthz", responses=problem_responses({503: "The read models stopped"}))
async def healthz(rm: ReadModelsDep) -> Response:
    """Liveness: the process answers and the read models' consumer is running."""
    if rm.error is not None or (rm.connected and not rm.alive):
        return problem(503, "Unhealthy", f"read models stopped: {rm.error!r}")
    return JSONResponse({"status": "ok"})


@router.get("/readyz", responses=problem_responses({503: "Still catching up with the topics"}))
async def readyz(rm: ReadModelsDep) -> Response:
    """Readiness: the index and stores caught up with the topic ends seen at start."""
    status = rm.status()
    if not status["ready"] or status["error"]:
        return problem(503, "Not ready", "catching up with the topics", **status)
    return JSONResponse(status)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(rm: ReadModelsDep) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(rm.metrics.registry), media_type=CONTENT_TYPE_LATEST)
