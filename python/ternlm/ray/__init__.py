"""ternlm on Ray (the optional extra `pip install 'ternlm[ray]'`): replicated serving with
Ray Serve and batch jobs with Ray Data, on one machine or a cluster of many.

    ternlm serve --ray --replicas N --model PATH ...        OpenAI's API, N replicas (serving.py)
    serve.run(ternlm.ray.app(PATH, replicas=N, ...))        the same Serve application, in Python
    serve run ternlm.ray:build model=PATH replicas=N        ... or from Serve's CLI / a config file
    ternlm.batch.generate(data, model=PATH, ...)            a batch job (ternlm/batch.py, jobs.py)

Every replica and every batch actor loads its own copy of the model, by path or Hub id, in
its own process, on whichever node Ray puts it: the path must exist on every node (shared
storage, or the same copy on each), and a Hub id resolves through that node's Hugging Face
cache (ternlm/hub.py). Nothing else crosses between nodes but requests and rows.

`import ternlm` does not import Ray; this package imports it when it is used. The defaults
ternlm sets for a Ray it starts itself (init()) keep it on this machine and quiet: no
dashboard, no usage statistics, no runtime-environment hooks that download.
"""
from __future__ import annotations

import os

EXTRA_HINT = "ternlm on Ray needs Ray Serve and Ray Data: pip install 'ternlm[ray]'"

# Set before Ray is imported (Ray reads them at import and passes them to its processes).
# RAY_USAGE_STATS_ENABLED=0: no usage report to anyscale.com; RAY_ENABLE_UV_RUN_RUNTIME_ENV=0:
# Ray does not re-create a `uv run` environment on its workers (which downloads).
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def require_extra():
    """Import Ray (with the quiet defaults above, unless the environment says otherwise);
    an ImportError naming the extra when Ray, Serve or Data is missing."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    from ..hints import require_modules
    require_modules(("ray", "ray.serve", "ray.data"), EXTRA_HINT, "not importable")
    import ray
    return ray


def init(address: str | None = None, num_cpus: int | None = None, **kwargs):
    """Connect to Ray unless this process already is: `address` a running cluster's
    ("auto", "HOST:6379" or "ray://HOST:10001"), or None to start Ray on this machine with
    num_cpus CPUs (default: every core) and no dashboard. Other keywords go to ray.init.
    Returns the ray module."""
    ray = require_extra()
    if not ray.is_initialized():
        if address is None:
            kwargs.setdefault("include_dashboard", False)
            kwargs.setdefault("num_cpus", num_cpus)
        ray.init(address=address, **kwargs)
    return ray


def app(model, **options):
    """The Ray Serve application serving `model` with OpenAI's API; options as
    serving.app's (replicas, threads, max_sequences, autoscaling bounds, load options)."""
    require_extra()
    from .serving import app as _app
    return _app(model, **options)


def build(args: dict):
    """Serve's application builder (`serve run ternlm.ray:build model=PATH replicas=2`, or
    `import_path: ternlm.ray:build` in a Serve config file): app() from a dict of strings
    or numbers, keys as app()'s keywords."""
    require_extra()
    from .serving import build as _build
    return _build(args)
