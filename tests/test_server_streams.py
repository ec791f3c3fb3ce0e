"""ternlm serve's streamed answers on the wire: the events that are ready together leave as
one body chunk (one ASGI message), and the bytes are those of one chunk per event.

The reference is the same app with TERNLM_SSE_COALESCE=0 (each event its own body chunk).
Answers carry a random id and the time they were created; `normalized` blanks both (and
the usage's cached_tokens, which depends on the order of concurrent requests), and
everything else (every event, its order, the final usage and `data: [DONE]`) must match
byte for byte. test_ray.py checks the same through Ray Serve's proxy.
"""
import asyncio
import http.client
import json
import re
import threading

import pytest

pytest.importorskip("fastapi", reason="needs the server extra: pip install -e '.[test,server]' (make test installs it)")
pytest.importorskip("uvicorn")

from ternlm.server import create_app  # noqa: E402

from concurrency import run_threads  # noqa: E402
from test_server import PROMPTS, Served, load, wait_idle  # noqa: E402

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
_ID_AND_TIME = re.compile(rb'"id":"[a-z]+-[0-9a-f]{32}","created":[0-9]+')
_CACHED = re.compile(rb'"cached_tokens":[0-9]+')


def normalized(data: bytes) -> bytes:
    """The bytes of a stream with its answer's random id and creation time blanked, and its
    usage's cached_tokens: how much of a chat prompt was found in a sequence's cache
    depends on which requests ran before on that sequence (the order threads got there)."""
    return _CACHED.sub(b'"cached_tokens":0', _ID_AND_TIME.sub(b'"id":"-","created":0', data))


def events_of(data: bytes) -> list:
    """The server-sent events of a whole body (normalized), without their framing."""
    assert data.endswith(b"\n\n"), data[-200:]
    return normalized(data).split(b"\n\n")[:-1]


def reference_app(model, monkeypatch, **kw):
    """create_app(model) sending one body chunk per event (the reference's framing)."""
    monkeypatch.setenv("TERNLM_SSE_COALESCE", "0")
    try:
        return create_app(model, **kw)
    finally:
        monkeypatch.delenv("TERNLM_SSE_COALESCE")


def asgi_stream(app, path, body, send_s=0.0):
    """The bodies of the http.response.body messages `app` sends for one POST, driven as an
    ASGI server drives it, in an event loop of this thread. send_s: each body message
    takes that long to send (a busy server's event loop), so events pile up meanwhile."""
    async def go():
        received, finished, out = [False], asyncio.Event(), []

        async def receive():
            if not received[0]:
                received[0] = True
                return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                assert message["status"] == 200
            elif message["type"] == "http.response.body":
                if send_s:
                    await asyncio.sleep(send_s)
                out.append(message["body"])

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
        try:
            await app(scope, receive, send)
        finally:
            finished.set()
        return out

    return asyncio.run(go())


def http_stream(port, path, body, timeout=120) -> bytes:
    """The whole body of one POST to 127.0.0.1:port (http.client undoes the chunked framing)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream"), data
        return data
    finally:
        conn.close()


def stream_requests(count, max_tokens=48):
    """`count` streamed greedy requests, completions and chat alternating, each its own
    prompt, some with the usage chunk."""
    out = []
    for i in range(count):
        prompt = f"{i}: {PROMPTS[i % len(PROMPTS)]}"
        body = {"max_tokens": max_tokens - i, "temperature": 0, "stream": True}
        if i % 3 == 0:
            body["stream_options"] = {"include_usage": True}
        if i % 2:
            out.append((CHAT, {**body, "messages": [{"role": "user", "content": prompt}]}))
        else:
            out.append((COMPLETIONS, {**body, "prompt": prompt}))
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from test_server import write_llama_numpy
    return load(write_llama_numpy(tmp_path_factory.mktemp("streams_llama")))


CASES = {
    "completion with usage": (COMPLETIONS, {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0,
                                            "stream": True, "stream_options": {"include_usage": True}}),
    "chat": (CHAT, {"messages": [{"role": "user", "content": "Tell me"}], "max_tokens": 30, "temperature": 0,
                    "stream": True}),
    "echo and a stop string": (COMPLETIONS, {"prompt": "The quick brown fox", "echo": True, "max_tokens": 40,
                                             "temperature": 0, "stream": True, "stop": ["never-there"]}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_slow_reader_gets_the_same_bytes_in_fewer_chunks(model, monkeypatch, case):
    """Sends that take 20 ms (the event loop busy elsewhere): the tokens that decode
    meanwhile go out together, and the bytes are those of one chunk per event."""
    path, body = CASES[case]
    ref = asgi_stream(reference_app(model, monkeypatch), path, body)
    got = asgi_stream(create_app(model), path, body, send_s=0.02)
    assert ref[-1] == b"" and all(chunk.count(b"data: ") == 1 for chunk in ref[:-1])
    assert normalized(b"".join(got)) == normalized(b"".join(ref))
    assert len(got) < len(ref)
    assert max(chunk.count(b"data: ") for chunk in got) > 2
    text = "".join(json.loads(e[6:])["choices"][0].get("text") or "" for e in events_of(b"".join(got))
                   if e.startswith(b"data: {") and json.loads(e[6:])["choices"])
    if "echo" in body:
        assert text == body["prompt"] + model.generate(body["prompt"], max_new_tokens=40)


def test_several_choices_keep_their_own_event_order(model, monkeypatch):
    """n = 3 sampled choices: how their events interleave depends on the threads, but each
    choice's own events are the reference's, in the same order, and the usage and
    [DONE] end the stream."""
    body = {"prompt": "Hello", "max_tokens": 24, "temperature": 1.0, "seed": 3, "n": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    ref = events_of(b"".join(asgi_stream(reference_app(model, monkeypatch), COMPLETIONS, body)))
    got = events_of(b"".join(asgi_stream(create_app(model), COMPLETIONS, body, send_s=0.02)))

    def per_choice(events):
        out = {}
        for e in events[:-2]:
            out.setdefault(json.loads(e[6:])["choices"][0]["index"], []).append(e)
        return out

    assert sorted(got) == sorted(ref) and per_choice(got) == per_choice(ref) and len(per_choice(got)) == 3
    assert got[-2:] == ref[-2:] and got[-1] == b"data: [DONE]" and b'"usage":{"prompt_tokens"' in got[-2]


def test_many_concurrent_streams_over_http(model, monkeypatch):
    """16 raw HTTP streams at once on a model with 8 sequences (half wait for one): each body
    is, byte for byte, what the reference app sends for that request alone."""
    requests = stream_requests(16)
    ref_app = reference_app(model, monkeypatch)
    want = [normalized(b"".join(asgi_stream(ref_app, path, body))) for path, body in requests]
    assert len(set(want)) == len(want)
    s = Served(create_app(model))
    try:
        barrier = threading.Barrier(len(requests))

        def one(request):
            barrier.wait(30)
            return normalized(http_stream(s.port, *request))

        assert run_threads([lambda r=r: one(r) for r in requests]) == want
        assert wait_idle(s)["active_sequences"] == 0
    finally:
        s.stop()
