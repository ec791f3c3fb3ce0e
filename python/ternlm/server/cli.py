"""`ternlm serve`: the command-line face of ternlm.server (registered by ternlm/cli.py).

    ternlm serve [--model PATH] [--host 127.0.0.1] [--port 8000] [--threads N]
                 [--max-sequences N] [--weights ...] [--head ...] [--context N] [--kv-dtype ...]
                 [--name ID] [--log-level LEVEL]
    ternlm serve --ray [--replicas N] [--ray-address ADDR] ...   on Ray Serve (ternlm/ray/cli.py)
"""
from __future__ import annotations

import socket
import sys

from ..cli import CliError, _add_model_args, _model_path, _one_thread_count, _positive_int

DESCRIPTION = (
    "Serve a model over HTTP with OpenAI's API (GET /v1/models, POST /v1/completions, POST "
    "/v1/chat/completions, streaming as server-sent events; GET /health), so that the openai client and "
    "tools built on it talk to ternlm. Concurrent requests run as concurrent sequences of the one loaded "
    "model, up to --max-sequences at once (more wait for a free one). Needs the server extra: "
    "pip install 'ternlm[server]'.")


def _port(s):
    v = int(s)
    if not 0 <= v <= 65535:
        raise ValueError
    return v


def add_parser(sub):
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (needs ternlm[server])",
                       description=DESCRIPTION)
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every "
                        "interface: there is no authentication)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default: 8000; 0 picks a free one)")
    p.add_argument("--max-sequences", type=_positive_int, default=None, metavar="N",
                   help="generations that run at once, each with its own KV cache (default: ternlm.load's); "
                        "requests beyond it wait")
    p.add_argument("--name", default=None, metavar="ID",
                   help="the model id clients see in /v1/models and answers (default: the model folder's name)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default: info: one line per request)")
    from ..ray.cli import add_arguments as add_ray_arguments     # no Ray import until --ray runs
    add_ray_arguments(p)
    p.set_defaults(func=cmd_serve)


def _listen(host, port) -> socket.socket:
    """A bound, listening socket (before the model loads: a port in use fails at once)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise CliError(f"--host {host}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {e.strerror}"
                       + (" (pick another --port)" if e.errno in (98, 48) else "")) from None
    sock.listen(2048)
    return sock


def cmd_serve(args) -> int:
    from ..ray.cli import check_ray_args, cmd_serve_ray
    check_ray_args(args)
    if args.ray:
        return cmd_serve_ray(args)
    from . import _require_extra, create_app
    try:
        _require_extra()
    except ImportError as e:
        raise CliError(str(e)) from None
    import uvicorn

    import ternlm
    sock = _listen(args.host, args.port)
    extra = {} if args.max_sequences is None else {"max_sequences": args.max_sequences}
    m = ternlm.load(_model_path(args), weights=args.weights, head=args.head, threads=_one_thread_count(args),
                    context=args.context, kv_dtype=args.kv_dtype, **extra)
    app = create_app(m, args.name)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"ternlm serve: {m!r} as {app.state.name!r}, OpenAI API at http://{shown}:{port}/v1 "
          f"(max_sequences={m.max_sequences})", file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:   # uvicorn re-raises the Ctrl-C it shut down on (not every version does)
        pass
    if not server.started:
        raise CliError("the server did not start (uvicorn's message above says why)")
    # Once started, only a signal (Ctrl-C, SIGTERM) ends it: exit as the other commands do on Ctrl-C.
    return 130
