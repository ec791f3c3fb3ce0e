"""ternlm serve: a real uvicorn server on 127.0.0.1 driven by the official openai client.

The model is a tiny random Llama written here without torch (so these tests also run under
the sanitizer build): byte-level tokenizer, a chat template, and a head whose rows for
everything but printable ASCII and space are zero, so greedy text is readable and never
ends at EOS (the largest of the other random logits is positive). Its greedy continuations
differ from prompt to prompt, which is what lets the concurrency tests see one request's
text leak into another's.
"""
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi", reason="needs the server extra: pip install -e '.[test,server]' "
                                                "(make test installs it)")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

import ternlm  # noqa: E402
from ternlm.server import create_app  # noqa: E402

from concurrency import run_threads  # noqa: E402
from conftest import CHAT_TEMPLATE, default_sigint  # noqa: E402

CONTEXT = 32768            # long enough that an unfinished generation takes seconds
MAX_SEQUENCES = 8
PRINTABLE = list(range(94)) + [220]     # byte-level ids of '!'..'~' and of the space


def write_llama_numpy(folder):
    """A random LlamaForCausalLM folder (f32 safetensors), without torch."""
    from ternlm import schema
    from ternlm.io.hf import config_from_hf
    from ternlm.io.safetensors import save_safetensors
    from ternlm.synthetic import BOS, BOS_ID, EOS, EOS_ID, _tokenizer
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
           "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 258, "max_position_embeddings": CONTEXT, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "hidden_act": "silu"}
    rng = np.random.default_rng(0)
    tensors = {}
    for s in schema.specs(config_from_hf(cfg)[0]):
        if s.is_norm:
            t = 1.0 + 0.2 * rng.standard_normal(s.shape)
        else:
            t = 0.08 * rng.standard_normal(s.shape) * (3.0 if s.role == "embedding" else 1.0)
        if s.role == "head":
            keep = np.zeros(s.shape[0], bool)
            keep[PRINTABLE] = True
            t[~keep] = 0.0
        tensors[s.hf_name] = t.astype(np.float32)
    os.makedirs(folder, exist_ok=True)
    save_safetensors(os.path.join(folder, "model.safetensors"), tensors)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    _tokenizer(258).save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS, "chat_template": CHAT_TEMPLATE}, f)
    return str(folder)


def load(folder, **kw):
    return ternlm.load(folder, context=CONTEXT, threads=1, max_sequences=MAX_SEQUENCES, progress=False, **kw)


class Served:
    """A uvicorn server for `app` in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def client(self, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120, **kw)

    def raw(self, method, path, body=None, headers=None):
        """(status, parsed JSON) of a hand-made request (for bodies no client would send)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            return r.status, json.loads(data) if data else None
        finally:
            conn.close()

    def health(self):
        status, body = self.raw("GET", "/health")
        assert status == 200
        return body

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return write_llama_numpy(tmp_path_factory.mktemp("server_llama"))


@pytest.fixture(scope="module")
def model(llama_folder):
    return load(llama_folder)


@pytest.fixture(scope="module")
def served(model):
    s = Served(create_app(model, model_name="tiny-llama"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(served):
    return served.client()


def wait_idle(served, timeout=60):
    """/health once no generation holds a sequence (bounded wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        h = served.health()
        if h["active_sequences"] == 0 or time.monotonic() > deadline:
            return h
        time.sleep(0.02)


PROMPTS = ["Hello", "The quick brown fox", "abc", "12345", "Once upon a time", "zebra", "Q: why?", "x=1;"]


# ---- endpoints -----------------------------------------------------------------------------------
def test_models_and_health(served, client):
    assert [m.id for m in client.models.list()] == ["tiny-llama"]
    assert client.models.retrieve("tiny-llama").owned_by == "ternlm"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    h = served.health()
    assert h["status"] == "ok" and h["model"] == "tiny-llama"
    assert h["active_sequences"] == 0 and h["max_sequences"] == MAX_SEQUENCES


def test_completion_is_the_models_greedy_text(model, client):
    r = client.completions.create(model="tiny-llama", prompt="Hello", max_tokens=24, temperature=0)
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.choices[0].text == model.generate("Hello", max_new_tokens=24)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(model.tokenizer.encode("Hello"))
    assert r.usage.completion_tokens == 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + 24


def test_completion_token_prompts_and_echo(model, client):
    ids = model.tokenizer.encode("abc")
    zebra = model.tokenizer.encode("zebra")
    r = client.completions.create(model="x", prompt=[ids, zebra], max_tokens=8, temperature=0, echo=True)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text == "abc" + model.generate(ids, max_new_tokens=8)
    assert r.choices[1].text == "zebra" + model.generate("zebra", max_new_tokens=8)
    assert r.usage.prompt_tokens == len(ids) + len(zebra)
    r = client.completions.create(model="x", prompt=["abc", "zebra"], max_tokens=8, temperature=0)
    assert [c.text for c in r.choices] == [model.generate(p, max_new_tokens=8) for p in ("abc", "zebra")]
    assert r.usage.completion_tokens == 16


def test_chat_uses_the_template(model, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    r = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=20, temperature=0)
    msg = r.choices[0].message
    assert r.object == "chat.completion" and msg.role == "assistant"
    assert msg.content == model.chat(messages, max_new_tokens=20)
    rendered = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(model.tokenizer.encode(rendered, add_special_tokens=False))
    assert r.usage.completion_tokens == 20 and r.choices[0].finish_reason == "length"
    # text parts are joined; "developer" is the system role
    parts = [{"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
             {"role": "user", "content": "Hi there"}]
    r2 = client.chat.completions.create(model="tiny-llama", messages=parts, max_tokens=20, temperature=0)
    assert r2.choices[0].message.content == msg.content


def test_next_chat_turn_reuses_the_cached_conversation(llama_folder, client):
    """Turn 2 of a conversation lands on the sequence that holds turn 1: its prompt tokens
    are reported as cached, and the reply is what a fresh model answers."""
    turn1 = [{"role": "user", "content": "Tell me about the sea"}]
    r1 = client.chat.completions.create(model="t", messages=turn1, max_tokens=24, temperature=0)
    turn2 = turn1 + [{"role": "assistant", "content": r1.choices[0].message.content},
                     {"role": "user", "content": "And the moon?"}]
    r2 = client.chat.completions.create(model="t", messages=turn2, max_tokens=24, temperature=0)
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens
    fresh = ternlm.load(llama_folder, context=CONTEXT, threads=1, max_sequences=1, progress=False)
    assert r2.choices[0].message.content == fresh.chat(turn2, max_new_tokens=24)
    assert fresh.stats["cached_tokens"] == 0


def test_chat_without_max_tokens_fills_the_context(llama_folder):
    m = ternlm.load(llama_folder, threads=1, context=64, progress=False)
    s = Served(create_app(m))
    try:
        r = s.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}],
                                               temperature=0)
        assert r.choices[0].finish_reason == "length"
        assert r.usage.prompt_tokens + r.usage.completion_tokens == 64
        assert [x.id for x in s.client().models.list()] == [os.path.basename(llama_folder)]
    finally:
        s.stop()


def test_streaming_equals_the_whole_answer(model, client, served):
    text = model.generate("Once upon a time", max_new_tokens=30)
    stream = client.completions.create(model="t", prompt="Once upon a time", max_tokens=30, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert len(chunks) > 3                                     # pieces, not one block
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30

    messages = [{"role": "user", "content": "Tell me"}]
    reply = model.chat(messages, max_new_tokens=25)
    chunks = list(client.chat.completions.create(model="t", messages=messages, max_tokens=25, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)

    # on the wire: server-sent events, the last one `data: [DONE]`
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "abc", "max_tokens": 5, "stream": True}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
    events = [e for e in r.read().decode().split("\n\n") if e]
    conn.close()
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_stop_strings(model, client):
    full = model.generate("The quick brown fox", max_new_tokens=40)
    stop = full[10:13]
    cut = full[:full.index(stop)]
    r = client.completions.create(model="t", prompt="The quick brown fox", max_tokens=40, temperature=0,
                                  stop=[stop, "never-there"])
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    stream = client.completions.create(model="t", prompt="The quick brown fox", max_tokens=40, temperature=0,
                                       stop=stop, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_and_seed(model, client):
    kw = dict(model="t", prompt="Hello", max_tokens=12, temperature=1.0, top_p=0.9, seed=5, n=3)
    r = client.completions.create(**kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    for i, c in enumerate(r.choices):                 # choice i samples with seed + i
        assert c.text == model.generate("Hello", max_new_tokens=12, temperature=1.0, top_p=0.9, seed=5 + i)
    assert len({c.text for c in r.choices}) > 1
    assert [c.text for c in client.completions.create(**kw).choices] == [c.text for c in r.choices]
    assert r.usage.completion_tokens <= 36
    assert r.usage.completion_tokens == 36 or any(c.finish_reason == "stop" for c in r.choices)

    chunks = list(client.completions.create(**kw, stream=True))
    texts = ["".join(c.choices[0].text for c in chunks if c.choices[0].index == i) for i in range(3)]
    assert texts == [c.text for c in r.choices]


# ---- concurrency ---------------------------------------------------------------------------------
def _stream_text(client, prompt, chat, max_tokens):
    if chat:
        chunks = client.chat.completions.create(model="t", messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, temperature=0, stream=True,
                                                stream_options={"include_usage": True})
        chunks = list(chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        chunks = list(client.completions.create(model="t", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                                stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    return text, chunks[-1].usage.completion_tokens, chunks[-1].usage.prompt_tokens


def test_concurrent_streaming_clients_get_their_solo_text(served):
    """8 clients stream at once (a mix of completions and chat, different lengths): each
    receives exactly the greedy text and token counts it receives alone."""
    jobs = [(p, i % 2 == 1, 40 + 8 * i) for i, p in enumerate(PROMPTS)]
    solo = [_stream_text(served.client(), *job) for job in jobs]
    assert len({s[0] for s in solo}) == len(jobs)
    for _ in range(2):
        barrier = threading.Barrier(len(jobs))

        def one(job):
            c = served.client()
            barrier.wait(30)
            return _stream_text(c, *job)

        assert run_threads([lambda j=j: one(j) for j in jobs]) == solo
    assert wait_idle(served)["active_sequences"] == 0


def test_disconnect_mid_stream_frees_the_sequence(served, client):
    before = served.health()["generations"]
    stream = client.completions.create(model="t", prompt="Hello", max_tokens=CONTEXT - 100, temperature=0,
                                       stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert served.health()["active_sequences"] == 1
    stream.close()                                   # the client goes away mid-stream
    h = wait_idle(served)
    assert h["active_sequences"] == 0
    # it was stopped, not run to the end (tens of thousands of tokens: seconds)
    assert h["generations"]["cancelled"] == before["cancelled"] + 1
    assert h["generations"]["finished"] == before["finished"]
    r = client.completions.create(model="t", prompt="abc", max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason == "length"


def test_disconnect_while_waiting_for_a_whole_answer(served):
    """A non-streaming request whose client leaves: its generation stops too."""
    before = served.health()["generations"]
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    body = {"prompt": "zebra", "max_tokens": CONTEXT - 100, "temperature": 0}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    deadline = time.monotonic() + 30
    while served.health()["active_sequences"] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    h = wait_idle(served)
    assert h["active_sequences"] == 0
    assert h["generations"]["cancelled"] == before["cancelled"] + 1


# ---- bad requests --------------------------------------------------------------------------------
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
USER = [{"role": "user", "content": "Hi"}]
BAD_REQUESTS = {
    "malformed JSON": (COMPLETIONS, b'{"prompt": "x", "max_tokens": 4,', None),
    "not JSON at all": (CHAT, b"hello", None),
    "body not an object": (COMPLETIONS, b"[1, 2]", None),
    "missing prompt": (COMPLETIONS, {"max_tokens": 3}, "prompt"),
    "temperature a string": (COMPLETIONS, {"prompt": "x", "temperature": "hot"}, "temperature"),
    "max_tokens a float": (COMPLETIONS, {"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    "max_tokens a bool": (COMPLETIONS, {"prompt": "x", "max_tokens": True}, "max_tokens"),
    "stream a number": (COMPLETIONS, {"prompt": "x", "stream": 1}, "stream"),
    "prompt a number": (COMPLETIONS, {"prompt": 5}, "prompt"),
    "prompt ids mixed with text": (COMPLETIONS, {"prompt": [1, "a"]}, "prompt"),
    "seed a string": (COMPLETIONS, {"prompt": "x", "seed": "1"}, "seed"),
    "stop a number": (COMPLETIONS, {"prompt": "x", "stop": 3}, "stop"),
    "messages not a list": (CHAT, {"messages": "hi"}, "messages"),
    "no messages": (CHAT, {"messages": []}, "messages"),
    "message content a number": (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    "message without role": (CHAT, {"messages": [{"content": "x"}]}, "messages[0].role"),
    "max_tokens < 0": (COMPLETIONS, {"prompt": "x", "max_tokens": -1}, "max_tokens"),
    "chat max_tokens < 0": (CHAT, {"messages": USER, "max_tokens": -5}, "max_tokens"),
    "temperature < 0": (CHAT, {"messages": USER, "temperature": -0.5}, "temperature"),
    "top_p 0": (COMPLETIONS, {"prompt": "x", "top_p": 0}, "top_p"),
    "n 0": (COMPLETIONS, {"prompt": "x", "n": 0}, "n"),
    "n too large": (COMPLETIONS, {"prompt": "x", "n": 1000}, "n"),
    "empty stop string": (COMPLETIONS, {"prompt": "x", "stop": [""]}, "stop"),
    "five stop strings": (COMPLETIONS, {"prompt": "x", "stop": list("abcde")}, "stop"),
    "token id outside the vocabulary": (COMPLETIONS, {"prompt": [1, 99999]}, "prompt"),
    "empty prompt list": (COMPLETIONS, {"prompt": []}, "prompt"),
    "too many choices": (COMPLETIONS, {"prompt": ["a"] * 20, "n": 4}, "prompt"),
    "presence_penalty": (COMPLETIONS, {"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    "logprobs": (CHAT, {"messages": USER, "logprobs": True}, "logprobs"),
    "tools": (CHAT, {"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    "image content": (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
                      "messages[0].content"),
    "role the template refuses": (CHAT, {"messages": [{"role": "narrator", "content": "x"}]}, "messages"),
    "stream_options without stream": (COMPLETIONS, {"prompt": "x", "stream_options": {"include_usage": True}},
                                      "stream_options"),
    "prompt longer than the context": (COMPLETIONS, {"prompt": "y" * CONTEXT}, "prompt"),
    "conversation longer than the context": (CHAT, {"messages": [{"role": "user", "content": "y" * CONTEXT}]},
                                             "messages"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_a_400_in_openais_shape(served, client, case):
    path, body, param = BAD_REQUESTS[case]
    raw = body if isinstance(body, bytes) else json.dumps({"model": "t", **body}).encode()
    status, answer = served.raw("POST", path, raw)
    assert status == 400, answer
    err = answer["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and isinstance(err["message"], str) and err["message"]
    assert err["param"] == param
    if "context" in case:
        assert err["code"] == "context_length_exceeded" and str(CONTEXT) in err["message"]
    # the server is alive and well afterwards
    assert client.completions.create(model="t", prompt="abc", max_tokens=3, temperature=0).usage.completion_tokens == 3


def test_bad_requests_through_the_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="t", prompt="x", max_tokens=-1)
    assert e.value.status_code == 400 and e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="t", messages=[{"role": "user", "content": "z" * CONTEXT}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:      # a stream refused before it starts
        client.completions.create(model="t", prompt="x", stream=True, stop=[""])
    assert e.value.body["param"] == "stop"


def test_unknown_endpoints_answer_in_openais_shape(served):
    status, answer = served.raw("POST", "/v1/embeddings", b"{}")
    assert status == 404 and "/v1/embeddings" in answer["error"]["message"]
    status, answer = served.raw("GET", "/v1/completions")
    assert status == 405 and answer["error"]["type"] == "invalid_request_error"


def test_model_without_chat_template(llama_folder):
    m = ternlm.load(llama_folder, threads=1, context=256, progress=False)
    m.tokenizer.chat_template = None
    s = Served(create_app(m))
    try:
        with pytest.raises(openai.BadRequestError) as e:
            s.client().chat.completions.create(model="m", messages=USER)
        assert e.value.code == "no_chat_template" and "/v1/completions" in str(e.value)
        assert s.client().completions.create(model="m", prompt="Hi", max_tokens=2).usage.completion_tokens == 2
    finally:
        s.stop()


# ---- the command -------------------------------------------------------------------------------
def test_missing_extra_is_named(monkeypatch, llama_folder, capsys):
    from ternlm.cli import main
    monkeypatch.setitem(sys.modules, "fastapi", None)          # as if not installed
    with pytest.raises(ImportError, match=r"ternlm\[server\]"):
        create_app(None)
    assert main(["serve", "--model", llama_folder]) == 2
    assert "pip install 'ternlm[server]'" in capsys.readouterr().err


def test_port_in_use_fails_before_loading(llama_folder, capsys):
    from ternlm.cli import main
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", "--model", llama_folder, "--port", str(busy.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_ternlm_serve_command(llama_folder):
    """python -m ternlm.server (= ternlm serve) in a process of its own, stopped by Ctrl-C."""
    cmd = [sys.executable, "-m", "ternlm.server", "--model", llama_folder, "--port", "0", "--threads", "1",
           "--context", "256", "--name", "cli-model", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        line = proc.stderr.readline()
        assert "OpenAI API at http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in c.models.list()] == ["cli-model"]
        r = c.chat.completions.create(model="cli-model", messages=USER, max_tokens=5, temperature=0)
        assert r.usage.completion_tokens == 5
    finally:
        proc.send_signal(2)
        out = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "Traceback" not in out, out     # 130: Ctrl-C, as the other commands


def test_more_clients_than_sequences_wait_their_turn(llama_folder):
    """6 streaming clients on a model with 2 sequences: the others wait for a free one, and
    every client still gets its solo text."""
    m = ternlm.load(llama_folder, threads=1, context=256, max_sequences=2, progress=False)
    s = Served(create_app(m))
    try:
        prompts = PROMPTS[:6]
        solo = [m.generate(p, max_new_tokens=32) for p in prompts]

        def one(prompt):
            chunks = s.client().completions.create(model="m", prompt=prompt, max_tokens=32, temperature=0, stream=True)
            return "".join(c.choices[0].text for c in chunks)

        assert run_threads([lambda p=p: one(p) for p in prompts]) == solo
        assert wait_idle(s)["max_sequences"] == 2
    finally:
        s.stop()


class FailingModel:
    """The model, except that each generation fails after two pieces (a model error in the
    middle of a generation, e.g. non-finite logits)."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def stream(self, prompt, **kw):
        def pieces():
            for i, piece in enumerate(self._model.stream(prompt, **kw)):
                if i == 2:
                    raise ValueError("logits at step 2 are not finite")
                yield piece
        return pieces()


def test_a_generation_that_fails_midway(model):
    s = Served(create_app(FailingModel(model)))
    try:
        c = s.client()
        with pytest.raises(openai.InternalServerError) as e:
            c.completions.create(model="m", prompt="Hello", max_tokens=20, temperature=0)
        assert e.value.status_code == 500 and "not finite" in str(e.value)
        with pytest.raises(openai.APIError, match="not finite"):
            for _ in c.completions.create(model="m", prompt="Hello", max_tokens=20, temperature=0, stream=True):
                pass
        h = wait_idle(s)
        assert h["generations"]["failed"] == 2 and h["active_sequences"] == 0
        assert s.raw("GET", "/v1/models")[0] == 200
    finally:
        s.stop()
