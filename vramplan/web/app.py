"""The starlette app behind `vramplan serve`: the page (package data under `static/`, no CDN) and a JSON API.

`GET /api/estimate?model=...&method=...&seq=...` answers exactly what `vramplan estimate ... --json` prints
(`/api/suggest?model=...&gpu=...` what `suggest --json` prints; `/api/sweep?...&field=seq|batch` the charts'
series, `plots.sweep_series` as `vramplan plot` draws them; `POST /api/config` stores an uploaded config.json read by
the strict reader `--model` uses; `/api/options` lists presets, cached hub ids, GPUs and the plan knobs, which
`knobs.py` reads from the CLI's parser):
the query's keys are the CLI's flags (without `--`), parsed by the CLI's own parser, and the result goes through
the same `report.estimate_json`. A bad value is HTTP 400 with `{"error": "<the CLI's one-line message>"}`.
Work per request is bounded: estimates run in worker threads behind a limiter of a few at a time, so 100
concurrent requests queue instead of piling up, and the event loop stays free to answer the page; sweeps (15-18
estimates each) and suggest searches have limiters of their own, so they never hold the estimates' workers.
"""

from __future__ import annotations

import contextlib
import io
from importlib import resources

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from vramplan.errors import VramplanError

ESTIMATE_WORKERS = 4
SWEEP_WORKERS = 2  # one page's two charts at once
_STATIC = {"app.js": "text/javascript", "style.css": "text/css", "charts.js": "text/javascript"}


def _parse(command: str, query: dict[str, str]):
    """The CLI's own parser over the query (flags finished as `cli.main` does); ValueError on bad input."""
    from vramplan.commands.plan_flags import finish_plan_args
    from vramplan.web.knobs import argv_for, parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args, extras = parser().parse_known_args(argv_for(command, query))
    except SystemExit:
        raise ValueError(err.getvalue().strip().splitlines()[-1] if err.getvalue() else "bad request") from None
    if extras:
        raise ValueError(f"unknown field(s): {' '.join(e for e in extras if e.startswith('--'))}")
    try:
        if getattr(args, "plan_flags", False):
            finish_plan_args(args)
    except VramplanError as exc:
        raise ValueError(str(exc)) from None
    return args


def estimate_json_for(query: dict[str, str]) -> dict:
    """The `estimate --json` object for these flags; raises ValueError with the CLI's one-line message."""
    from vramplan.commands.plan_flags import gpu_dirs, plan_from_args

    args = _parse("estimate", query)
    try:
        from vramplan import report
        from vramplan.api import calibrated, estimate

        result = estimate(args.model, plan_from_args(args), gpu=args.gpu, gpu_dirs=gpu_dirs(args))
        if args.gpu and not args.no_calibration:
            result, _ = calibrated(result, None, gpu_dirs(args))
        return report.estimate_json(result)
    except VramplanError as exc:
        raise ValueError(str(exc)) from None


async def _answer(request: Request, compute, limiter) -> Response:
    """`compute(query)` in a worker thread under `limiter`; a ValueError (the CLI's one-line message) is a 400."""
    try:
        body = await anyio.to_thread.run_sync(compute, dict(request.query_params), limiter=limiter)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse(body)


async def api_estimate(request: Request) -> Response:
    return await _answer(request, estimate_json_for, request.app.state.limiter)


def suggest_json_for(query: dict[str, str]) -> dict:
    """The `suggest --json` object for these flags (ValueError with the one-line message on bad input)."""
    from vramplan.commands.suggest import request_from_args
    from vramplan.recommend import recommend
    from vramplan.report.advice import advice_json

    args = _parse("suggest", query)
    try:
        return advice_json(recommend(request_from_args(args), lambda done, total: None))
    except VramplanError as exc:
        raise ValueError(str(exc)) from None


async def api_suggest(request: Request) -> Response:
    """One search at a time (its own limiter): estimates keep their workers while a search runs."""
    return await _answer(request, suggest_json_for, request.app.state.search_limiter)


async def api_options(request: Request) -> Response:
    """Presets, GPU profiles, hub ids in the local HF cache (what `--model` resolves offline) and the plan knobs."""
    from vramplan.hardware import load_profiles
    from vramplan.models import presets
    from vramplan.web.knobs import knobs
    from vramplan.web.uploads import cached_hub_ids

    return JSONResponse({"models": sorted(presets()), "hub_ids": cached_hub_ids(), "gpus": sorted(load_profiles()),
                         "knobs": list(knobs("estimate"))})


def sweep_json_for(query: dict[str, str]) -> dict:
    """`plots.sweep_series` for the page's plan: memory vs `field` (seq or batch) for full/LoRA/QLoRA."""
    from vramplan.commands.plan_flags import gpu_dirs
    from vramplan.plots import plan_factory, sweep_series

    query = dict(query)
    field = query.pop("field", "seq")
    if field not in ("seq", "batch"):
        raise ValueError(f"field: '{field}' is not one of seq, batch")
    args = _parse("estimate", query)
    if gpu_dirs(args):
        raise ValueError("--gpu-dir is not supported by the sweep")
    try:
        return sweep_series(args.model, plan_factory(args), args.gpu, field)
    except VramplanError as exc:
        raise ValueError(str(exc)) from None


async def api_sweep(request: Request) -> Response:
    return await _answer(request, sweep_json_for, request.app.state.sweep_limiter)


async def api_config(request: Request) -> Response:
    """POST a config.json (at most `uploads.MAX_CONFIG_BYTES`): read by the strict reader `--model` uses; the
    answer names the model value to plan with."""
    from vramplan.web.uploads import MAX_CONFIG_BYTES, store_config

    if int(request.headers.get("content-length") or 0) > MAX_CONFIG_BYTES:
        return JSONResponse({"error": f"config.json larger than {MAX_CONFIG_BYTES // 1024} KiB"}, status_code=413)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_CONFIG_BYTES:
            return JSONResponse({"error": f"config.json larger than {MAX_CONFIG_BYTES // 1024} KiB"}, status_code=413)
    try:
        model = await anyio.to_thread.run_sync(store_config, body, request.query_params.get("name", "config"),
                                               request.app.state.upload_dir)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse(model)


async def page(request: Request) -> Response:
    return HTMLResponse(resources.files("vramplan.web").joinpath("static", "index.html").read_text())


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _STATIC:
        return Response("not found", status_code=404)
    text = resources.files("vramplan.web").joinpath("static", name).read_text()
    return Response(text, media_type=_STATIC[name])


def create_app(upload_dir: str | None = None) -> Starlette:
    """The app; uploaded configs go under `upload_dir` (default: a fresh temporary folder)."""
    import tempfile

    app = Starlette(routes=[
        Route("/", page),
        Route("/static/{name}", static),
        Route("/api/estimate", api_estimate),
        Route("/api/suggest", api_suggest),
        Route("/api/options", api_options),
        Route("/api/sweep", api_sweep),
        Route("/api/config", api_config, methods=["POST"]),
    ])
    app.state.limiter = anyio.CapacityLimiter(ESTIMATE_WORKERS)
    app.state.search_limiter = anyio.CapacityLimiter(1)
    app.state.sweep_limiter = anyio.CapacityLimiter(SWEEP_WORKERS)
    app.state.upload_dir = upload_dir or tempfile.mkdtemp(prefix="vramplan-uploads-")
    return app
