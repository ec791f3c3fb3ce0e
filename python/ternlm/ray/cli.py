"""`ternlm serve --ray`: the OpenAI-compatible server as a Ray Serve application (serving.py).

    ternlm serve --ray [--replicas N] [--min-replicas N --max-replicas N] [--ray-address ADDR]
                 --model PATH [--threads N] [--max-sequences N] [--host H] [--port P] ...

Without --ray-address Ray starts on this machine (every core, no dashboard) and stops with
the command; with one, the application is deployed on that cluster and deleted again when
the command ends (Ctrl-C or SIGTERM). Serve's HTTP proxy listens on --host:--port of the
head node.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time

from ..cli import CliError, _model_path, _one_thread_count

APP_NAME = "ternlm"


def add_arguments(p):
    g = p.add_argument_group("Ray Serve (needs ternlm[ray])")
    g.add_argument("--ray", action="store_true",
                   help="serve with Ray Serve: replicas, each a process with its own model, on this machine or "
                        "a Ray cluster; requests go to the least-loaded replica")
    g.add_argument("--replicas", type=_count, default=None, metavar="N", help="replicas to start (default: 1)")
    g.add_argument("--min-replicas", type=_count0, default=None, metavar="N",
                   help="autoscaling: the fewest replicas (turns autoscaling on)")
    g.add_argument("--max-replicas", type=_count, default=None, metavar="N",
                   help="autoscaling: the most replicas (turns autoscaling on)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="a running Ray cluster (HOST:6379, ray://HOST:10001 or auto; default: start Ray here)")


def _count(s):
    v = int(s)
    if v < 1:
        raise ValueError
    return v


def _count0(s):
    v = int(s)
    if v < 0:
        raise ValueError
    return v


def check_ray_args(args):
    """--replicas and the others mean nothing without --ray: a CliError rather than ignored."""
    if not args.ray:
        given = [f for f, v in (("--replicas", args.replicas), ("--min-replicas", args.min_replicas),
                                ("--max-replicas", args.max_replicas), ("--ray-address", args.ray_address))
                 if v is not None]
        if given:
            raise CliError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --ray")


def _model_for_replicas(args) -> str:
    """--model as the replicas must see it: a local path made absolute (replicas run in
    other folders), a Hub id as given (each replica resolves it in its node's cache)."""
    if args.model is None:
        return _model_path(args)
    return os.path.abspath(args.model) if os.path.exists(args.model) else args.model


def cmd_serve_ray(args) -> int:
    from . import require_extra
    try:
        require_extra()
    except ImportError as e:
        raise CliError(str(e)) from None
    if args.port == 0:
        raise CliError("--port 0: with --ray give the port Serve's proxy listens on")
    from .serving import app
    model = _model_for_replicas(args)
    replicas = args.replicas or max(1, args.min_replicas or 1)
    try:
        application = app(model, replicas=replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                          threads=_one_thread_count(args), max_sequences=args.max_sequences, weights=args.weights,
                          head=args.head, context=args.context, kv_dtype=args.kv_dtype,
                          revision=getattr(args, "revision", None), name=args.name)
    except ValueError as e:
        raise CliError(str(e)) from None
    from . import init
    ray = init(args.ray_address, logging_level="WARNING", log_to_driver=args.log_level in ("info", "debug"))
    own_ray = args.ray_address is None
    from ray import serve
    logging.getLogger("ray.serve").setLevel(args.log_level.upper())     # the driver's own lines
    # SIGTERM ends the command as Ctrl-C does, so the application is taken down either way
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": args.host, "port": args.port},
                    logging_config={"log_level": args.log_level.upper()})
        try:
            serve.run(application, name=APP_NAME, route_prefix="/", blocking=False)
        except Exception as e:               # a replica failed to start: the model's error
            raise CliError(f"the Serve application did not start: {type(e).__name__}: {e}") from None
        shown = f"[{args.host}]" if ":" in args.host else args.host
        scaling = f"{replicas} replica{'s' if replicas > 1 else ''}"
        if args.min_replicas is not None or args.max_replicas is not None:
            scaling += f", autoscaling {args.min_replicas or replicas}..{args.max_replicas or replicas}"
        print(f"ternlm serve: {model} on Ray ({scaling}), OpenAI API at http://{shown}:{args.port}/v1",
              file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            if own_ray:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            if own_ray:
                ray.shutdown()
