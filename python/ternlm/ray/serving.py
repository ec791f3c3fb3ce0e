"""ternlm's OpenAI-compatible server as a Ray Serve deployment: N replicas, each a process
holding its own model (threads, max_sequences), behind Serve's HTTP proxy.

    client ── HTTP ──> Serve proxy (one per node, or the head only)
                          │ router: power of two choices -- ask two random replicas how
                          │ many requests they hold, send to the one with fewer; a replica
                          │ holding max_ongoing_requests takes no more, the request waits
                          ▼ in the proxy and tries again (backoff 25 ms doubling to 0.5 s)
                  replica 1 .. N   (TernlmReplica, one model each)
                    the same FastAPI app as `ternlm serve` (ternlm.server.create_app):
                    same routes, validation, errors, streaming, disconnects

max_ongoing_requests defaults to twice max_sequences: a replica holds up to one waiting
request per sequence, inside its model (which hands a freed sequence to the next request at
once), and the rest wait in Serve's queue. A request in Serve's queue is not woken when a
replica finishes one: the router tries again with backoff, so with max_ongoing_requests =
max_sequences every freed sequence would stay idle until some queued request's next try
(docs/ARCHITECTURE.md, "Many processes: Ray"). With autoscaling bounds, Serve adds
replicas while the ongoing requests per replica stay above target_ongoing_requests and
removes them when they fall below (the model loads in each new replica).

A replica that dies (killed, out of memory, its node lost) is replaced by Serve; the
requests it was answering fail (a 5xx from the proxy, or a stream cut short), and
clients retry them (the openai client retries failed requests twice by default). Each
answer carries the header x-ternlm-replica naming the replica that produced it.
"""
from __future__ import annotations

from ray import serve

REPLICA_HEADER = "x-ternlm-replica"


class _ReplicaHeader:
    """ASGI middleware adding x-ternlm-replica to every HTTP answer. Plain ASGI (no
    BaseHTTPMiddleware), so streaming and disconnect detection pass through untouched."""

    def __init__(self, app, value: str):
        self.app = app
        self.header = (REPLICA_HEADER.encode(), value.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), self.header])
            await send(message)

        await self.app(scope, receive, tagged)


@serve.deployment(name="ternlm")
@serve.ingress()
class TernlmReplica:
    """One replica: loads the model when Serve starts it (a path that exists on its node,
    or a Hub id found in its node's Hugging Face cache), then serves create_app(model)."""

    def __init__(self, model: str, load_options: dict, name: str | None = None):
        import ternlm
        self.model = ternlm.load(model, progress=False, **load_options)
        self.name = name

    def __serve_build_asgi_app__(self):
        from ..server import create_app
        app = create_app(self.model, self.name)
        app.add_middleware(_ReplicaHeader, value=serve.get_replica_context().replica_id.unique_id)
        return app


LOAD_OPTIONS = ("threads", "max_sequences", "weights", "head", "context", "kv_dtype", "revision")


def app(model: str, *, replicas: int = 1, min_replicas: int | None = None, max_replicas: int | None = None,
        target_ongoing_requests: float | None = None, max_ongoing_requests: int | None = None,
        num_cpus: float | None = None, name: str | None = None, threads: int | None = None,
        max_sequences: int | None = None, weights: str | None = None, head: str | None = None,
        context: int | None = None, kv_dtype: str = "f32", revision: str | None = None,
        runtime_env: dict | None = None):
    """The Serve application (serve.run(app(...)) deploys it).

    model: a path present on every node that may run a replica, or a Hub id (each
    replica resolves it in its node's cache). replicas: how many to start (with
    autoscaling: the initial count). min_replicas / max_replicas: autoscaling bounds
    (either turns autoscaling on; target_ongoing_requests per replica, default half of
    max_sequences). max_ongoing_requests: requests one replica holds at once, decoding or
    waiting for a sequence (default: twice max_sequences, or 16). num_cpus: CPUs Ray
    reserves per replica (default: threads, or 1). name: the model id in /v1/models
    (default: the folder's name).
    threads, max_sequences, weights, head, context, kv_dtype, revision: ternlm.load's.
    runtime_env: Ray's runtime environment of each replica (e.g. {"env_vars": {...}})."""
    for key, v in (("replicas", replicas), ("threads", threads), ("max_sequences", max_sequences),
                   ("max_ongoing_requests", max_ongoing_requests), ("min_replicas", min_replicas),
                   ("max_replicas", max_replicas)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "min_replicas" else 1)):
            raise ValueError(f"{key} must be an int >= {0 if key == 'min_replicas' else 1}, got {v!r}")
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be a path or a Hub id (a non-empty str), got {model!r}")
    if runtime_env is not None and not isinstance(runtime_env, dict):
        raise ValueError(f"runtime_env must be a dict (Ray's runtime environment), got {runtime_env!r}")
    load_options = {"threads": threads, "weights": weights, "head": head, "context": context,
                    "kv_dtype": kv_dtype, "revision": revision}
    if max_sequences is not None:
        load_options["max_sequences"] = max_sequences
    sequences = max_sequences or 8
    ongoing = max_ongoing_requests or 2 * sequences
    options = {"max_ongoing_requests": ongoing,
               "ray_actor_options": {"num_cpus": float(num_cpus if num_cpus is not None else threads or 1)}}
    if runtime_env:
        options["ray_actor_options"]["runtime_env"] = runtime_env
    if min_replicas is not None or max_replicas is not None:
        lo = replicas if min_replicas is None else min_replicas
        hi = max(replicas, lo) if max_replicas is None else max_replicas
        if not lo <= replicas <= hi:
            raise ValueError(f"replicas={replicas} must lie within min_replicas={lo} and max_replicas={hi}")
        options["autoscaling_config"] = {
            "min_replicas": lo, "max_replicas": hi, "initial_replicas": replicas,
            "target_ongoing_requests": target_ongoing_requests or max(1.0, sequences / 2)}
    else:
        options["num_replicas"] = replicas
    return TernlmReplica.options(**options).bind(model, load_options, name)


_INT_KEYS = ("replicas", "min_replicas", "max_replicas", "max_ongoing_requests", "threads", "max_sequences",
             "context")
_FLOAT_KEYS = ("target_ongoing_requests", "num_cpus")


def build(args: dict):
    """app() from a Serve builder's arguments (`serve run ternlm.ray:build k=v ...` passes
    strings; a config file's `args:` may pass numbers)."""
    args = dict(args)
    if "model" not in args:
        raise ValueError("ternlm.ray:build needs model=PATH (a path on every node, or a Hub id)")
    known = {"model", "name", "weights", "head", "kv_dtype", "revision", *_INT_KEYS, *_FLOAT_KEYS}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"ternlm.ray:build: unknown argument(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    for key in _INT_KEYS + _FLOAT_KEYS:
        if key in args and isinstance(args[key], str):
            try:
                args[key] = (int if key in _INT_KEYS else float)(args[key])
            except ValueError:
                raise ValueError(f"ternlm.ray:build: {key}={args[key]!r} is not a number") from None
    return app(args.pop("model"), **args)
