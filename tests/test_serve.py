"""The HTTP server of section 6.6 (dlbook.serve.app), its load test and the chat page.

A real uvicorn server on a free localhost port, over a tiny random GPT (byte-level tokenizer with
SmolLM2's special tokens) served by the real BatchingEngine: replies are checked against the
model's own greedy decoding, every bad request against its status code and OpenAI-style error
body (and the server keeps answering), a mid-stream disconnect against the engine's cancel, and
the chat page in headless Chromium.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from dlbook.bpe_gguf import GGUFBPETokenizer, bytes_to_unicode
from dlbook.cli import main as cli_main
from dlbook.nn.gpt import GPT, GPTConfig
from dlbook.serve.app import ServeLimits, TextStream, create_app, serve_in_thread
from dlbook.serve.engine import BatchingEngine
from dlbook.serve.loadtest import load_test, percentile

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LIMITS = ServeLimits(max_tokens=24, default_max_tokens=6, max_body_bytes=4096,
                     request_timeout_s=20.0, max_classify_inputs=4)


def tiny_tokenizer() -> GGUFBPETokenizer:
    """One token per byte, plus SmolLM2's three special tokens (ids 256-258)."""
    b2u = bytes_to_unicode()
    return GGUFBPETokenizer([b2u[b] for b in range(256)] + SPECIALS, [], {256, 257, 258})


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=259, block_size=160, n_layer=1, n_head=2, n_embd=16, rope=True)
    return GPT(config).double().eval()


class SlowGPT(GPT):
    """A GPT that takes at least ``delay`` seconds a step, so requests overlap on a fast CPU."""

    delay = 0.03

    def features(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().features(*args, **kwargs)


class RecordingEngine(BatchingEngine):
    """The real engine, remembering every stream it handed out."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.streams = []

    def submit(self, request):
        stream = super().submit(request)
        self.streams.append(stream)
        return stream


class RuleClassifier:
    """Three classes; the logits are a rule of the text, so the answer can be predicted."""

    classes = ("short", "medium", "long")

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, texts):
        self.calls += 1
        return torch.tensor([[3.0 * (len(t) < 5), 3.0 * (5 <= len(t) < 20), 3.0 * (len(t) >= 20)]
                             for t in texts])


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def server(model, tokenizer):
    made = []

    def factory():
        made.append(RuleClassifier())
        return made[-1]

    app = create_app(model, tokenizer, model_name="tiny", limits=LIMITS, max_batch=4,
                     classifier_factory=factory)
    with serve_in_thread(app) as url:
        yield url, made


@pytest.fixture(scope="module")
def slow_server(tokenizer):
    torch.manual_seed(1)
    config = GPTConfig(vocab_size=259, block_size=160, n_layer=1, n_head=2, n_embd=16, rope=True)
    slow = SlowGPT(config).eval()
    engine = RecordingEngine(slow, max_batch=4, max_wait_s=0.02, max_queue=4)
    limits = ServeLimits(max_tokens=100, default_max_tokens=6, request_timeout_s=1.0)
    app = create_app(slow, tokenizer, model_name="slow", engine=engine, limits=limits,
                     classifier=RuleClassifier())
    with serve_in_thread(app) as url:
        yield url, engine


def greedy_text(model, tokenizer, ids, n, stop):
    out = model.generate(torch.tensor([ids]), n, temperature=0.0)[0, len(ids):].tolist()
    cut = next((i for i, t in enumerate(out) if t in stop), len(out))
    reason = "stop" if cut < len(out) else "length"
    return tokenizer.decode(out[:cut]), cut, reason


def sse_payloads(text: str) -> list:
    lines = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def check_error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    for w in words:
        assert w in err["message"], err["message"]
    return err


# --------------------------------------------------------------------------- good requests


def test_health_and_models(server):
    url, _ = server
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["context"] == 160
    models = httpx.get(url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny", "r8-classifier"]


def test_completion_is_the_models_greedy_continuation(server, model, tokenizer):
    url, _ = server
    prompt = "Hello, wor"
    r = httpx.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    expected, n, reason = greedy_text(model, tokenizer, tokenizer.encode(prompt), 12, {256})
    choice = body["choices"][0]
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert choice["text"] == expected and choice["finish_reason"] == reason
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": n,
                             "total_tokens": len(prompt) + n}


def test_streamed_completion_equals_the_whole_one(server):
    url, _ = server
    body = {"prompt": "Stream me", "max_tokens": 10}
    whole = httpx.post(url + "/v1/completions", json=body).json()
    r = httpx.post(url + "/v1/completions",
                   json=dict(body, stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = sse_payloads(r.text)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == whole["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_chat_shapes_and_template(server, model, tokenizer):
    url, _ = server
    messages = [{"role": "user", "content": "Hi there"}]
    body = {"model": "tiny", "messages": messages, "max_tokens": 8}
    r = httpx.post(url + "/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    reply = r.json()
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected, n, reason = greedy_text(model, tokenizer, ids, 8, {256, 258})
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert reply["choices"][0]["finish_reason"] == reason
    assert reply["usage"]["prompt_tokens"] == len(ids)
    r = httpx.post(url + "/v1/chat/completions", json=dict(body, stream=True))
    chunks = sse_payloads(r.text)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": reason}


def test_classify_is_lazy_and_follows_the_classifier(server):
    url, made = server
    assert httpx.get(url + "/health").json()["classifier_loaded"] is (len(made) > 0)
    r = httpx.post(url + "/v1/classify", json={"input": ["hi", "a medium text", "x" * 30]})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["label"] for d in data] == ["short", "medium", "long"]
    for d in data:
        assert abs(sum(d["probabilities"].values()) - 1) < 1e-5
    one = httpx.post(url + "/v1/classify", json={"input": "hey"}).json()["data"]
    assert len(one) == 1 and one[0]["label"] == "short"
    assert len(made) == 1 and made[0].calls == 2  # built once, on the first request
    assert httpx.get(url + "/health").json()["classifier_loaded"] is True


def test_page_and_static_files(server):
    url, _ = server
    page = httpx.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<html lang="en">' in page.text and "http" not in page.text.replace(
        'http-equiv', '')  # nothing from elsewhere
    js = httpx.get(url + "/static/chat.js")
    assert js.status_code == 200 and "/v1/chat/completions" in js.text
    check_error(httpx.get(url + "/static/../app.py"), 404)


def test_text_stream_holds_back_partial_characters(tokenizer):
    text = TextStream(tokenizer)
    ids = tokenizer.encode("é€!")  # 2 + 3 + 1 bytes, one token each
    pieces = [text.push(i) for i in ids] + [text.flush()]
    assert pieces == ["", "é", "", "", "€", "!", ""]


# --------------------------------------------------------------------------- bad requests

BAD = [
    ("/v1/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/completions", {"prompt": 7}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "[1, 24]"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10**9}, 400, "[1, 24]"),
    ("/v1/completions", {"prompt": "x" * 150, "max_tokens": 20}, 400, "context is 160"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": "x", "temperature": 1.0, "seed": 2**64}, 400, "seed"),
    ("/v1/completions", {"prompt": "x", "seed": -1}, 400, "seed"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", [1, 2], 400, ""),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "gpt-4"),
    ("/v1/completions", {"prompt": "x" * 5000}, 413, "4096 bytes"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "<|im_end|>"}]}, 400,
     "special token"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 200}]}, 400,
     "context"),
    ("/v1/classify", {"input": []}, 400, "1 to 4"),
    ("/v1/classify", {"input": ["a"] * 5}, 400, "1 to 4"),
    ("/v1/classify", {"input": 3}, 400, "input"),
    ("/v1/classify", {"input": "x", "model": "tiny"}, 404, "r8-classifier"),
    ("/v1/nothing", {}, 404, ""),
]


@pytest.mark.parametrize(("path", "body", "status", "word"), BAD)
def test_bad_requests_get_4xx_and_the_server_lives(server, path, body, status, word):
    url, _ = server
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(url + path, content=content, headers={"Content-Type": "application/json"})
    check_error(r, status, word)
    assert httpx.get(url + "/health").status_code == 200


def test_a_bad_seed_next_to_a_good_request(server, model, tokenizer):
    """The bad seed is refused (400) before it reaches the engine; the request sent with it
    is answered in full."""
    url, _ = server
    answers: dict = {}

    def post(name, body):
        answers[name] = httpx.post(url + "/v1/completions", json=body, timeout=20)

    threads = [threading.Thread(target=post, args=("bad", {"prompt": "hi", "max_tokens": 5,
                                                           "temperature": 1.0,
                                                           "seed": 2**64})),
               threading.Thread(target=post, args=("good", {"prompt": "hi", "max_tokens": 5}))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    check_error(answers["bad"], 400, "seed")
    expected, _, _ = greedy_text(model, tokenizer, tokenizer.encode("hi"), 5, {256})
    good = answers["good"]
    assert good.status_code == 200 and good.json()["choices"][0]["text"] == expected
    assert httpx.get(url + "/health").status_code == 200


def test_body_limit_without_content_length(server):
    url, _ = server

    def chunks():
        yield b'{"prompt": "'
        yield b"y" * 5000
        yield b'"}'

    r = httpx.post(url + "/v1/completions", content=chunks(),
                   headers={"Content-Type": "application/json"})
    check_error(r, 413, "4096")


# --------------------------------------------------------------------------- under load


def _open_stream(url, body, started: threading.Event, out: list):
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=20) as r:
        out.append(r.status_code)
        for line in r.iter_lines():
            if line.startswith("data: "):
                started.set()
        out.append("done")


def test_queue_full_is_429(slow_server):
    url, engine = slow_server
    # one long request holds the worker, four more fill the queue (max_queue=4, max_batch=4)
    started = threading.Event()
    out: list = []
    holder = threading.Thread(target=_open_stream, args=(
        url, {"prompt": "hold", "max_tokens": 30, "stream": True}, started, out))
    holder.start()
    assert started.wait(10)
    waiting = [engine.submit(engine.streams[0].request) for _ in range(4)]
    r = httpx.post(url + "/v1/completions", json={"prompt": "one more", "max_tokens": 2})
    err = check_error(r, 429, "busy")
    assert err["type"] == "rate_limit_error" and r.headers["retry-after"] == "1"
    for s in waiting:
        s.cancel()
    holder.join(20)
    assert out == [200, "done"]


@pytest.fixture(scope="module")
def patient_server(tokenizer):
    """A slow model and a deadline (60 s) far beyond any request here: a row that ends
    "cancelled" was cancelled because its client left."""
    torch.manual_seed(2)
    config = GPTConfig(vocab_size=259, block_size=160, n_layer=1, n_head=2, n_embd=16, rope=True)
    engine = RecordingEngine(SlowGPT(config).eval(), max_batch=4)
    limits = ServeLimits(max_tokens=100, request_timeout_s=60.0)
    app = create_app(engine.model, tokenizer, model_name="slow", engine=engine, limits=limits,
                     classifier=RuleClassifier())
    with serve_in_thread(app) as url:
        yield url, engine


def _wait_done(stream, seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while not stream.done and time.monotonic() < end:
        time.sleep(0.02)


@pytest.mark.parametrize("streaming", [True, False])
def test_client_that_leaves_is_cancelled(patient_server, streaming):
    url, engine = patient_server
    n = len(engine.streams)
    body = {"prompt": "leave", "max_tokens": 90, "stream": streaming}  # >= 2.7 s of work
    if streaming:
        with httpx.stream("POST", url + "/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # close the connection after the first chunk
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/completions", json=body, timeout=0.5)
    left = engine.streams[n]
    _wait_done(left)
    assert left.cancelled and left.finish_reason == "cancelled"
    assert left.completion_tokens < 90
    ok = httpx.post(url + "/v1/completions", json={"prompt": "after", "max_tokens": 3})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 3


def test_deadline_ends_a_request_with_504(slow_server):
    url, engine = slow_server
    n = len(engine.streams)
    r = httpx.post(url + "/v1/completions", json={"prompt": "slow", "max_tokens": 100},
                   timeout=20)  # 100 steps x >= 30 ms > the 1 s deadline
    err = check_error(r, 504, "deadline")
    assert err["type"] == "timeout_error"
    assert engine.streams[n].cancelled
    r = httpx.post(url + "/v1/completions",
                   json={"prompt": "slow", "max_tokens": 100, "stream": True}, timeout=20)
    payloads = sse_payloads(r.text)
    assert payloads[-1]["error"]["type"] == "timeout_error"
    assert httpx.get(url + "/health").status_code == 200


def test_load_test_counts_and_batches(slow_server):
    url, engine = slow_server
    before = engine.stats
    result = load_test(url, concurrency=4, n_requests=8, max_tokens=5, prompt="load")
    assert result.ok == 8 and len(result.requests) == 8
    assert all(r.tokens <= 5 for r in result.requests)
    assert result.tokens == sum(r.tokens for r in result.requests) > 0
    assert all(r.ttft_s <= r.latency_s for r in result.requests if r.tokens)
    after = engine.stats
    waves = after["batches"] - before["batches"]
    assert after["requests"] - before["requests"] == 8 and waves < 8  # some ran together
    summary = result.summary()
    assert summary["latency_p50_s"] <= summary["latency_p95_s"] <= summary["latency_p99_s"]
    bad = load_test(url, concurrency=2, n_requests=2, max_tokens=1000)  # over the 100 limit
    assert bad.ok == 0 and all("HTTP 400" in r.error for r in bad.requests)


class BrokenGPT(GPT):
    def features(self, *args, **kwargs):
        raise RuntimeError("out of memory (pretend)")


def test_model_error_is_500_and_the_server_lives(tokenizer):
    config = GPTConfig(vocab_size=259, block_size=160, n_layer=1, n_head=2, n_embd=16, rope=True)
    made = []
    app = create_app(BrokenGPT(config).eval(), tokenizer, model_name="broken", limits=LIMITS,
                     classifier_factory=lambda: made.append(RuleClassifier()) or made[-1],
                     preload_classifier=True)
    with serve_in_thread(app) as url:
        assert made and httpx.get(url + "/health").json()["classifier_loaded"] is True
        err = check_error(httpx.post(url + "/v1/completions", json={"prompt": "x"}), 500,
                          "failed")
        assert err["type"] == "server_error"
        r = httpx.post(url + "/v1/completions", json={"prompt": "x", "stream": True})
        assert sse_payloads(r.text)[-1]["error"]["type"] == "server_error"
        assert httpx.get(url + "/health").json()["engine"]["errors"] == 2


@pytest.mark.parametrize("streaming", [False, True])
def test_engine_shutdown_under_a_request_is_503(tokenizer, streaming):
    """A request cut short because the engine closed is not reported as a normal finish."""
    torch.manual_seed(3)
    config = GPTConfig(vocab_size=259, block_size=160, n_layer=1, n_head=2, n_embd=16, rope=True)
    engine = RecordingEngine(SlowGPT(config).eval(), max_batch=2)
    app = create_app(engine.model, tokenizer, model_name="slow", engine=engine,
                     limits=ServeLimits(max_tokens=100, request_timeout_s=60.0),
                     classifier=RuleClassifier())
    with serve_in_thread(app) as url:
        closer = threading.Thread(target=lambda: (_wait_started(engine), engine.close()))
        closer.start()
        r = httpx.post(url + "/v1/completions",
                       json={"prompt": "x", "max_tokens": 90, "stream": streaming}, timeout=30)
        closer.join(30)
        assert engine.streams[0].finish_reason == "cancelled"
        assert not engine.streams[0].cancelled  # ended by the engine, not by the client
        if streaming:
            assert r.status_code == 200  # the stream had begun: the error is its last event
            err = sse_payloads(r.text)[-1]["error"]
            assert err["code"] == "shutting_down" and "shutting down" in err["message"]
        else:
            assert check_error(r, 503, "shutting down")["code"] == "shutting_down"


def _wait_started(engine, seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (engine.streams and engine.streams[0].tokens):
        time.sleep(0.01)


def test_background_classifier_answers_503_until_ready(model, tokenizer):
    release, made = threading.Event(), []

    def factory():
        release.wait(20)
        made.append(RuleClassifier())
        return made[-1]

    app = create_app(model, tokenizer, model_name="tiny", limits=LIMITS,
                     classifier_factory=factory, background_classifier=True)
    with serve_in_thread(app) as url:
        t0 = time.monotonic()
        r = httpx.post(url + "/v1/classify", json={"input": "hey"}, timeout=20)
        assert time.monotonic() - t0 < 5  # answered at once, not held while it builds
        err = check_error(r, 503, "loading")
        assert err["code"] == "classifier_loading" and int(r.headers["retry-after"]) > 0
        check_error(httpx.post(url + "/v1/classify", json={"input": "hey"}), 503, "loading")
        assert httpx.get(url + "/health").json()["classifier_loaded"] is False
        release.set()
        end = time.monotonic() + 20
        while time.monotonic() < end:
            r = httpx.post(url + "/v1/classify", json={"input": "hey"})
            if r.status_code == 200:
                break
            time.sleep(0.05)
        assert r.status_code == 200 and r.json()["data"][0]["label"] == "short"
        assert len(made) == 1  # one build, though several requests asked during it


def test_percentile_matches_numpy():
    xs = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    for q in (0, 50, 95, 99, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    with pytest.raises(ValueError, match="q must"):
        percentile(xs, 101)


def test_cli_serve_rejects_bad_options(capsys):
    assert cli_main(["serve", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert cli_main(["serve", "--max-batch", "0"]) == 2
    assert cli_main(["serve", "--max-tokens", "0"]) == 2
    for bad in ("nan", "inf", "0"):
        assert cli_main(["serve", "--timeout", bad]) == 2
        assert "request_timeout_s" in capsys.readouterr().err


def test_cli_serve_builds_the_app_it_runs(monkeypatch, model, tokenizer):
    import uvicorn

    from dlbook import hub

    loaded, ran = [], {}
    monkeypatch.setattr(hub, "load", lambda name: loaded.append(name) or (model, tokenizer))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    argv = ["serve", "--port", "8123", "--max-batch", "3", "--max-tokens", "20", "--timeout",
            "9", "--max-body-bytes", "1000"]
    assert cli_main(argv) == 0
    assert loaded == ["smollm2-135m"] and ran["host"] == "127.0.0.1" and ran["port"] == 8123
    app = ran["app"]
    assert app.state.engine.max_batch == 3 and app.state.model_name == "smollm2-135m"
    assert app.state.limits == ServeLimits(max_tokens=20, default_max_tokens=20,
                                           max_body_bytes=1000, request_timeout_s=9.0)


# --------------------------------------------------------------------------- the page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_chat_page_streams_in_a_browser(server, model, tokenizer):
    from playwright.sync_api import sync_playwright

    from tests.test_site import CHROMIUM_FLAGS

    url, _ = server
    messages = [{"role": "user", "content": "Hello"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected, _, _ = greedy_text(model, tokenizer, ids, 6, {256, 258})
    outside = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model-name').textContent === 'tiny'")
        for label in ("Temperature", "Top-p", "Max tokens"):
            assert page.get_by_label(label).is_visible()
        page.get_by_label("Max tokens").fill("6")
        page.get_by_label("Your message").fill("Hello")
        page.get_by_role("button", name="Send").click()
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Stop')"
                               " || document.getElementById('status').textContent === 'Done.'")
        turns = page.locator("#log li")
        assert turns.count() == 2
        assert turns.nth(1).locator(".text").text_content() == expected
        # a second turn: the page sends the whole conversation, so the reply continues it
        history = messages + [{"role": "assistant", "content": expected},
                              {"role": "user", "content": "And then?"}]
        ids = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=True)
        expected_2, _, _ = greedy_text(model, tokenizer, ids, 6, {256, 258})
        page.evaluate("document.getElementById('status').textContent = ''")
        page.get_by_label("Your message").fill("And then?")
        page.get_by_label("Your message").press("Enter")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Stop')"
                               " || document.getElementById('status').textContent === 'Done.'")
        assert turns.count() == 4
        assert turns.nth(3).locator(".text").text_content() == expected_2
        browser.close()
    assert outside == []
