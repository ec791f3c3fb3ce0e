"""ternlm on Ray: a local two-node Ray cluster started here (a head and one more node, both
on 127.0.0.1, 2 logical CPUs each, no dashboard), `ternlm serve --ray` driven by the
official openai client, and ternlm.batch jobs, one with an actor killed in the middle.

The model is test_server.py's tiny random Llama (byte-level tokenizer, greedy text that
never ends at EOS and differs from prompt to prompt), so a row's text shows whether it is
the row's own. Run alone with `make test-ray`; the cluster is shut down at the end even
when a test fails (every Ray process of it is a child of this process: nothing is left).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

# Before Ray is imported (its processes inherit these): every Ray process binds 127.0.0.1
# (Ray otherwise picks the machine's outward address), no usage statistics, no `uv run`
# environment hook.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[test,server,ray]' (make test-ray)")
pytest.importorskip("ray.serve")
pytest.importorskip("ray.data")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
psutil = pytest.importorskip("psutil")

import ternlm  # noqa: E402
import ternlm.batch  # noqa: E402
import ternlm.ray  # noqa: E402
from ternlm.cli import main  # noqa: E402

from concurrency import run_threads  # noqa: E402
from conftest import default_sigint  # noqa: E402
from test_hub import add_snapshot  # noqa: E402
from test_server import write_llama_numpy  # noqa: E402

CONTEXT = 512              # batch jobs
SERVE_CONTEXT = 4096       # the served model: room for requests long enough to kill a replica under
PROMPTS = ["Hello", "The quick brown fox", "abc", "12345", "Once upon a time", "zebra", "Q: why?", "x=1;"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_llama_numpy(tmp_path_factory.mktemp("ray_llama"))


@pytest.fixture(scope="module")
def model(folder):
    return ternlm.load(folder, context=SERVE_CONTEXT, threads=1, max_sequences=8, progress=False)


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """A Hugging Face cache holding the model as the Hub repository test-org/tiny-llama."""
    return str(tmp_path_factory.mktemp("ray_hf_home"))


@pytest.fixture(scope="module")
def cluster(hf_home):
    """The Ray cluster. Its processes inherit HF_HOME (the cache above) and
    HF_HUB_OFFLINE=1 (conftest.py) from this process's environment as it starts."""
    from ray.cluster_utils import Cluster
    saved = os.environ.get("HF_HOME")
    os.environ["HF_HOME"] = hf_home
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        c.add_node(num_cpus=2)
        ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        if saved is None:
            os.environ.pop("HF_HOME", None)
        else:
            os.environ["HF_HOME"] = saved


def ray_processes(marker):
    """PIDs of this test's Ray worker processes whose command line names `marker`
    (Ray titles an actor's process after its class: ServeReplica:..., MapWorker(...))."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(p.cmdline()):
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


# ---- serving ---------------------------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(cluster, folder):
    """`ternlm serve --ray --replicas 2` in a process of its own, on the test's cluster."""
    port = free_port()
    cmd = [sys.executable, "-m", "ternlm.server", "--ray", "--ray-address", cluster.address, "--replicas", "2",
           "--model", folder, "--threads", "1", "--max-sequences", "4", "--context", str(SERVE_CONTEXT),
           "--name", "tiny", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        lines = []
        while True:
            line = proc.stderr.readline()
            lines.append(line)
            if "OpenAI API at" in line or not line:
                break
        assert "OpenAI API at http://127.0.0.1:" in line, "".join(lines) + proc.stderr.read()
        threading.Thread(target=proc.stderr.read, daemon=True).start()      # keep the pipe drained
        yield line.split(" at ")[1].split()[0]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 130


def client(url, retries=0):
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=retries, timeout=120)


def complete(c, prompt, max_tokens=16):
    """(text, replica id) of a greedy completion."""
    raw = c.completions.with_raw_response.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0)
    return raw.parse().choices[0].text, raw.headers["x-ternlm-replica"]


def concurrently(fn, args):
    return run_threads([lambda a=a: fn(*a) for a in args])


def test_serve_answers_as_the_model_does(served, model):
    c = client(served)
    assert [m.id for m in c.models.list()] == ["tiny"]
    r = c.completions.create(model="tiny", prompt="Hello", max_tokens=24, temperature=0)
    assert r.choices[0].text == model.generate("Hello", max_new_tokens=24)
    assert r.usage.completion_tokens == 24 and r.choices[0].finish_reason == "length"
    messages = [{"role": "user", "content": "Tell me"}]
    r = c.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    assert r.choices[0].message.content == model.chat(messages, max_new_tokens=20)
    chunks = list(c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=30, temperature=0,
                                       stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == model.generate("Once upon a time",
                                                                                        max_new_tokens=30)
    assert len(chunks) > 3 and chunks[-1].usage.completion_tokens == 30
    chunks = list(c.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0,
                                            stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == model.chat(messages, max_new_tokens=20)
    with pytest.raises(openai.BadRequestError) as e:          # the same validation as `ternlm serve`
        c.completions.create(model="tiny", prompt="x", max_tokens=-1)
    assert e.value.body["param"] == "max_tokens"


def test_concurrent_requests_use_both_replicas(served, model):
    """16 clients at once: a replica holds at most 2 x max_sequences = 8 requests, so
    Serve's router must use both; each client gets its solo greedy text."""
    prompts = [p + str(i) for i in range(2) for p in PROMPTS]
    got = concurrently(lambda p: complete(client(served), p, 24), [(p,) for p in prompts])
    assert [t for t, _ in got] == [model.generate(p, max_new_tokens=24) for p in prompts]
    assert len({r for _, r in got}) == 2


def test_streams_through_serve_are_the_plain_servers_bytes(served, model, monkeypatch):
    """12 raw HTTP streams at once through Serve's proxy (more than the 2 x 4 sequences the
    replicas hold): each body is, byte for byte, what the plain app sends for that request
    alone with one body chunk per event (test_server_streams.py)."""
    from test_server_streams import asgi_stream, http_stream, normalized, reference_app, stream_requests
    requests = stream_requests(12)
    ref = reference_app(model, monkeypatch, model_name="tiny")
    want = [normalized(b"".join(asgi_stream(ref, path, body))) for path, body in requests]
    port = int(served.rsplit(":", 1)[1].split("/")[0])
    assert concurrently(lambda path, body: normalized(http_stream(port, path, body)), requests) == want


def test_a_killed_replica_is_replaced(served, model):
    """SIGKILL one replica while requests run: the clients' retries (the openai client's
    max_retries) get every answer right, and Serve starts a replacement."""
    before = ray_processes("ServeReplica")
    assert len(before) == 2
    prompts = [p + "!" for p in PROMPTS]

    def slow(p):
        return complete(client(served, retries=4), p, 3000)[0]

    threads_out = {}
    runner = threading.Thread(target=lambda: threads_out.setdefault("texts", concurrently(slow, [(p,) for p in prompts])))
    runner.start()
    time.sleep(0.5)
    os.kill(before[0], signal.SIGKILL)
    assert runner.is_alive()                  # killed while the requests ran
    runner.join(300)
    assert threads_out["texts"] == model.generate(prompts, max_new_tokens=3000)
    deadline = time.monotonic() + 120
    while True:
        now = ray_processes("ServeReplica")
        if len(now) == 2 and before[0] not in now:
            break
        assert time.monotonic() < deadline, f"no replacement replica: {now}"
        time.sleep(0.5)
    assert complete(client(served, retries=2), "abc")[0] == model.generate("abc", max_new_tokens=16)


def test_serve_options_are_checked(folder, capsys):
    assert main(["serve", "--replicas", "2", "--model", folder]) == 2
    assert "--replicas applies to --ray" in capsys.readouterr().err
    with pytest.raises(ValueError, match="replicas=5 must lie within"):
        ternlm.ray.app(folder, replicas=5, min_replicas=1, max_replicas=3)
    with pytest.raises(ValueError, match="unknown argument"):
        ternlm.ray.build({"model": folder, "replica": "2"})
    with pytest.raises(ValueError, match="runtime_env must be a dict"):
        ternlm.ray.app(folder, runtime_env="TERNLM_SSE_COALESCE=0")
    with pytest.raises(ValueError, match="threads='x' is not a number"):
        ternlm.ray.build({"model": folder, "threads": "x"})
    application = ternlm.ray.build({"model": folder, "replicas": "2", "min_replicas": "1", "max_replicas": "4",
                                    "threads": "2", "max_sequences": "6"})
    assert type(application).__name__ == "Application"


# ---- batch jobs ------------------------------------------------------------------------------------
def test_batch_job_survives_a_killed_actor(cluster, model, tmp_path):
    """300 prompts on 2 actors; once a fifth of the rows are in, one actor process is
    killed. Ray restarts it and reruns its batch: every row is in the output exactly once,
    in order, and is the single-process greedy text."""
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} #{i}" for i in range(300)]
    killed = []

    def progress(done, total):
        assert total == len(prompts)
        if done >= total // 5 and not killed:
            pids = ray_processes("MapWorker")
            assert pids, "no actor process found"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    out = tmp_path / "out.jsonl"
    path = ternlm.batch.generate(prompts, model=model.source, output=str(out), actors=2, max_sequences=8,
                                 batch_size=10, max_new_tokens=8, context=CONTEXT, progress=progress)
    assert path == str(out) and killed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(len(prompts)))
    assert [r["text"] for r in rows] == model.generate(prompts, max_new_tokens=8)
    assert not os.path.exists(str(out) + ".parts")


def test_batch_job_resumes_where_it_stopped(cluster, model, tmp_path):
    """A job interrupted after its first batches leaves them in OUTPUT.parts; the same job
    started again runs only the other rows."""
    prompts = [f"resume {i}" for i in range(60)]
    out = str(tmp_path / "out.parquet")

    def stop(done, total):
        if done >= 20:
            raise KeyboardInterrupt

    kw = dict(model=model.source, output=out, batch_size=10, max_new_tokens=6, context=CONTEXT)
    with pytest.raises(KeyboardInterrupt):
        ternlm.batch.generate(prompts, progress=stop, **kw)
    assert os.path.isdir(out + ".parts") and not os.path.exists(out)
    second = []
    ternlm.batch.generate(prompts, progress=lambda done, total: second.append(total), **kw)
    assert second and second[0] <= 40
    import pyarrow.parquet as pq
    table = pq.read_table(out).to_pylist()
    assert [r["id"] for r in table] == list(range(60))
    assert [r["text"] for r in table] == model.generate(prompts, max_new_tokens=6)
    with pytest.raises(ValueError, match="partial output of another job"):
        os.makedirs(out + ".parts")
        with open(os.path.join(out + ".parts", "job.json"), "w") as f:
            json.dump({"kind": "generate", "rows": 3}, f)
        ternlm.batch.generate(prompts, progress=False, **kw)


def test_batch_inputs_and_perplexity(cluster, model, tmp_path):
    """JSONL with plain prompts and conversations, a Ray Dataset, and perplexity over
    Parquet: each row's result is the one-process result, in input order."""
    convo = [{"role": "user", "content": "Hi there"}]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"q": p, "other": i}) + "\n" for i, p in enumerate(["abc", convo, "zebra"])))
    got = ternlm.batch.generate(str(jsonl), model=model.source, column="q", max_new_tokens=10, context=CONTEXT,
                                progress=False)
    assert got == [model.generate("abc", max_new_tokens=10), model.chat(convo, max_new_tokens=10),
                   model.generate("zebra", max_new_tokens=10)]
    ds = ray.data.from_items([{"prompt": p, "n": i} for i, p in enumerate(PROMPTS * 3)])
    assert ternlm.batch.generate(ds, model=model.source, max_new_tokens=5, batch_size=4, context=CONTEXT,
                                 progress=False) == model.generate(PROMPTS * 3, max_new_tokens=5)
    sampled = ternlm.batch.generate(PROMPTS, model=model.source, temperature=0.9, top_k=40, seed=7, batch_size=3,
                                    max_new_tokens=8, context=CONTEXT, progress=False)
    assert sampled == [model.generate(p, temperature=0.9, top_k=40, seed=7 + i, max_new_tokens=8)
                       for i, p in enumerate(PROMPTS)]                      # row i samples with seed + i
    assert sampled != model.generate(PROMPTS, max_new_tokens=8)
    texts = ["The quick brown fox jumps over the lazy dog. " * (1 + i % 3) for i in range(12)]
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": texts}), tmp_path / "texts.parquet")
    ppl = ternlm.batch.perplexity(str(tmp_path / "texts.parquet"), model=model.source, window=16, stride=8,
                                  context=CONTEXT, progress=False)
    want = [model.perplexity(t, window=16, stride=8, progress=False) for t in texts]
    np.testing.assert_allclose(ppl, want, rtol=1e-12)
    with pytest.raises(ValueError, match="no column 'prompt'"):
        ternlm.batch.generate(str(tmp_path / "texts.parquet"), model=model.source, progress=False)
    with pytest.raises(ValueError, match="in.jsonl:1: expected a JSON object with the key 'prompt'"):
        ternlm.batch.generate(str(jsonl), model=model.source, progress=False)


def test_actors_find_a_hub_id_in_their_nodes_cache(cluster, hf_home, folder, model):
    """model= a Hub id: each actor resolves it through the Hugging Face cache of its node
    (HF_HOME, offline), not through the driver."""
    add_snapshot(hf_home, "test-org/tiny-llama", {f: os.path.join(folder, f) for f in os.listdir(folder)},
                 commit="a" * 40)
    prompts = [f"hub {i}" for i in range(12)]
    assert ternlm.batch.generate(prompts, model="test-org/tiny-llama", actors=2, max_new_tokens=6, context=CONTEXT,
                                 progress=False) == model.generate(prompts, max_new_tokens=6)
    with pytest.raises(RuntimeError, match="could not load the model 'test-org/not-there': FileNotFoundError: "
                                           "test-org/not-there: no such file"):
        ternlm.batch.generate(prompts, model="test-org/not-there", max_new_tokens=6, progress=False)
