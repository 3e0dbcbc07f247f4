"""`vramplan serve`: the local web planner (vramplan.web; starlette + uvicorn from the `web` extra)."""

from __future__ import annotations

import argparse


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve",
                       description="Serve the planner page and its JSON API on this machine.")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from vramplan.errors import InputError

    try:
        import uvicorn

        from vramplan.web.app import create_app
    except ImportError:
        raise InputError("vramplan serve needs starlette and uvicorn: pip install 'vramplan[web]'") from None
    print(f"vramplan: http://{args.host}:{args.port}/")
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")
    return 0
