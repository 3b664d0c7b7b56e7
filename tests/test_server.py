"""charnn serve, driven by the real OpenAI client (and raw HTTP where the client hides details).

Every server here is started by the test itself on 127.0.0.1 and a free port, in a thread of
this process (charnn.server.background_server); one test runs the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

import charnn
from charnn.cli import main
from charnn.errors import CharnnError
from charnn.serve.config import ServeConfig
from charnn.serve.run import background_server, exposure_warning, model_ids
from conftest import slowed

KEY = "test-key-123"


@pytest.fixture(scope="module")
def model(tiny_run):
    return charnn.load(tiny_run)


@pytest.fixture(scope="module")
def server(tiny_run):
    config = ServeConfig(port=0, api_key=KEY, max_tokens=512, max_prompt=200, max_n=8, max_body=16_384)
    with background_server({"tiny": charnn.load(tiny_run)}, config) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=30)


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def wait_idle(url: str, seconds: float = 5.0) -> dict:
    """/health once nothing is running or waiting (or the last answer when time runs out)."""
    deadline = time.monotonic() + seconds
    while True:
        h = httpx.get(f"{url}/health").json()
        if (h["active"] == 0 and h["queued"] == 0) or time.monotonic() > deadline:
            return h
        time.sleep(0.02)


# --- completions ------------------------------------------------------------------------------
def test_models_and_health(client, server, tiny_run):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert models[0].owned_by == "charnn"
    assert models[0].model_extra["charnn"]["architecture"] == "lstm"
    assert client.models.retrieve("tiny").id == "tiny"
    h = httpx.get(f"{server}/health").json()
    assert h["status"] == "ok" and h["models"] == 1


def test_completion_is_the_librarys_text_for_the_same_seed(client, model):
    r = client.completions.create(model="tiny", prompt="ROMEO: ", max_tokens=60, temperature=0.9,
                                  top_p=0.95, seed=123, extra_body={"top_k": 8})
    expected = model.generate("ROMEO: ", 60, temperature=0.9, top_k=8, top_p=0.95, seed=123)
    assert r.object == "text_completion" and r.model == "tiny"
    assert r.choices[0].text == expected
    assert len(r.choices[0].text) == 60 and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (7, 60, 67)
    again = client.completions.create(model="tiny", prompt="ROMEO: ", max_tokens=60, temperature=0.9,
                                      top_p=0.95, seed=123, extra_body={"top_k": 8})
    assert again.choices[0].text == expected
    other = client.completions.create(model="tiny", prompt="ROMEO: ", max_tokens=60, seed=124)
    assert other.choices[0].text != expected


def test_n_choices_and_prompt_lists(client, model):
    r = client.completions.create(model="tiny", prompt="JULIET", max_tokens=30, n=3, seed=5)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.text for c in r.choices] == [model.generate("JULIET", 30, seed=5 + i) for i in range(3)]
    assert len({c.text for c in r.choices}) == 3
    # Two prompts x n=2: choice p * n + i continues prompt p with seed + i.
    r = client.completions.create(model="tiny", prompt=["ROMEO", "JULIET"], max_tokens=20, n=2, seed=9)
    expected = [model.generate(p, 20, seed=9 + i) for p in ("ROMEO", "JULIET") for i in range(2)]
    assert [c.text for c in r.choices] == expected
    assert r.usage.prompt_tokens == 5 + 6 and r.usage.completion_tokens == 80


def test_greedy_and_zero_tokens_and_echo(client, model):
    r = client.completions.create(model="tiny", prompt="ROMEO", max_tokens=40, temperature=0)
    assert r.choices[0].text == model.generate("ROMEO", 40, temperature=0)
    r = client.completions.create(model="tiny", prompt="ROMEO", max_tokens=0)
    assert r.choices[0].text == "" and r.choices[0].finish_reason == "length"
    r = client.completions.create(model="tiny", prompt="ROMEO", max_tokens=10, echo=True, seed=1)
    assert r.choices[0].text == "ROMEO" + model.generate("ROMEO", 10, seed=1)


def test_stop_strings(client, model):
    full = model.generate("JULIET", 200, temperature=0)
    stop = full[20:22]
    cut = full[: full.index(stop)]
    r = client.completions.create(model="tiny", prompt="JULIET", max_tokens=200, temperature=0, stop=stop)
    assert r.choices[0].text == cut == model.generate("JULIET", 200, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    pieces, finish = [], None
    for chunk in client.completions.create(model="tiny", prompt="JULIET", max_tokens=200, temperature=0,
                                           stop=["\u2603", stop], stream=True):
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == cut and finish == "stop"


def test_streaming_with_the_openai_client(tiny_run, model):
    slow = slowed(charnn.load(tiny_run), 0.002)  # so that the text arrives in many pieces
    with background_server({"tiny": slow}) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        texts, chunks, usage = {0: "", 1: ""}, 0, None
        for chunk in c.completions.create(model="tiny", prompt="ROMEO", max_tokens=100, n=2, seed=3,
                                          stream=True, stream_options={"include_usage": True}):
            if chunk.usage:
                usage = chunk.usage
            for ch in chunk.choices:
                texts[ch.index] += ch.text
                chunks += 1
    assert texts == {i: model.generate("ROMEO", 100, seed=3 + i) for i in range(2)}
    assert chunks > 6  # it streamed: 200 characters over ~0.2 s came in many events
    assert usage.completion_tokens == 200 and usage.prompt_tokens == 5  # the prompt is read once


def test_server_sent_events_format(server, model):
    body = {"model": "tiny", "prompt": "ROMEO", "max_tokens": 50, "seed": 4, "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, headers=auth()) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == model.generate("ROMEO", 50, seed=4)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"


def test_unknown_prompt_characters(client, model):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="ROMEZ\u03a9", max_tokens=5)
    err = e.value.body
    assert e.value.status_code == 400 and err["param"] == "prompt"
    assert "'Z'" in err["message"] and "'\u03a9'" in err["message"] and '"unknown": "skip"' in err["message"]
    for policy in ("skip", "replace"):
        r = client.completions.create(model="tiny", prompt="ROMEZ", max_tokens=20, seed=2,
                                      extra_body={"unknown": policy})
        assert r.choices[0].text == model.generate("ROMEZ", 20, seed=2, unknown=policy)


# --- client mistakes: the right 4xx, in OpenAI's shape ------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, param",
    [
        ({"model": "nope"}, openai.NotFoundError, "model"),
        ({"n": 9}, openai.BadRequestError, "n"),  # over --max-n 8
        ({"prompt": ["RO"] * 5, "n": 2}, openai.BadRequestError, "n"),  # 10 choices
        ({"prompt": []}, openai.BadRequestError, "prompt"),
        ({"prompt": "R" * 201}, openai.BadRequestError, "prompt"),  # over --max-prompt 200
        ({"max_tokens": 513}, openai.BadRequestError, "max_tokens"),  # over --max-tokens 512
        ({"max_tokens": -1}, openai.BadRequestError, "max_tokens"),
        ({"temperature": -0.5}, openai.BadRequestError, "temperature"),
        ({"top_p": 0}, openai.BadRequestError, "top_p"),
        ({"top_p": 1.5}, openai.BadRequestError, "top_p"),
        ({"n": 0}, openai.BadRequestError, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, openai.BadRequestError, "stop"),
        ({"stop": "x" * 65}, openai.BadRequestError, "stop"),
        ({"logprobs": 6}, openai.BadRequestError, "logprobs"),  # over OpenAI's limit of 5
        ({"best_of": 3}, openai.BadRequestError, "best_of"),
        ({"seed": 2**53 + 1}, openai.BadRequestError, "seed"),
        ({"extra_body": {"top_k": -1}}, openai.BadRequestError, "top_k"),
        ({"extra_body": {"unknown": "ignore"}}, openai.BadRequestError, "unknown"),
        ({"extra_body": {"no_such_option": 1}}, openai.BadRequestError, "no_such_option"),
    ],
)
def test_bad_requests_map_to_the_right_exceptions(client, kwargs, error, param):
    args = {"model": "tiny", "prompt": "RO", "max_tokens": 5, **kwargs}
    with pytest.raises(error) as e:
        client.completions.create(**args)
    assert e.value.status_code < 500
    assert e.value.body["param"] == param
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["message"]


def test_auth_failures(server):
    c = openai.OpenAI(base_url=server + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        c.completions.create(model="tiny", prompt="RO", max_tokens=5)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        c.models.list()
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": f"Bearer {KEY}x"}):
        for r in (httpx.get(f"{server}/v1/models", headers=headers),
                  httpx.post(f"{server}/v1/completions", json={"model": "tiny"}, headers=headers)):
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # Not even a malformed body gets past the key check.
    r = httpx.post(f"{server}/v1/completions", content=b"{not json", headers={"Authorization": "Basic " + KEY})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    # The page and the health check need no key.
    assert httpx.get(server + "/").status_code == 200
    assert httpx.get(server + "/health").status_code == 200


def test_raw_http_mistakes_are_4xx_in_openai_shape(server):
    cases = [
        httpx.post(f"{server}/v1/completions", content=b"{not json", headers={**auth(), "Content-Type": "application/json"}),
        httpx.post(f"{server}/v1/completions", json=[1, 2], headers=auth()),
        httpx.post(f"{server}/v1/completions", json={"prompt": "RO"}, headers=auth()),  # no model
        httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": "x" * 20_000}, headers=auth()),
        httpx.get(f"{server}/v1/completions", headers=auth()),
        httpx.get(f"{server}/v1/nothing", headers=auth()),
        httpx.post(f"{server}/v1/completions", content=b"x" * 20_000,
                   headers={**auth(), "Content-Length": "20000", "Content-Type": "application/json"}),
    ]
    assert [r.status_code for r in cases] == [400, 400, 400, 413, 405, 404, 413]
    for r in cases:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert cases[2].json()["error"]["param"] == "model"
    assert "--max-body" in cases[3].json()["error"]["message"]

    def chunked():  # no Content-Length: the limit still holds while the body is read
        for _ in range(40):
            yield b"x" * 1000

    r = httpx.post(f"{server}/v1/completions", content=chunked(), headers=auth())
    assert r.status_code == 413


# --- limits, concurrency, disconnects ------------------------------------------------------------
def test_concurrent_requests_get_the_same_text_as_alone(server, model):
    """Requests batched together keep their own settings and seeds."""
    cases = [dict(prompt=p, seed=s, temperature=t, top_k=k, top_p=tp, max_tokens=m)
             for p, s, t, k, tp, m in [
                 ("ROMEO", 1, 1.0, 0, 1.0, 80), ("JULIET", 2, 0.7, 5, 1.0, 60), ("R", 3, 0.0, 0, 1.0, 90),
                 ("ROMEO: ", 4, 1.2, 0, 0.9, 70), ("JU", 5, 0.5, 3, 0.8, 50), ("ROMEO", 1, 1.0, 0, 1.0, 40),
                 ("JULIET: ", 7, 1.0, 10, 0.95, 100), ("caf", 8, 0.9, 0, 1.0, 30)]]
    results: dict[int, str] = {}
    c = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=30)

    def run(i, case):
        extra = {"top_k": case["top_k"]}
        args = {k: v for k, v in case.items() if k != "top_k"}
        if i % 2:
            r = c.completions.create(model="tiny", extra_body=extra, **args)
            results[i] = r.choices[0].text
        else:
            results[i] = "".join(ch.choices[0].text for ch in c.completions.create(
                model="tiny", stream=True, extra_body=extra, **args))

    for _ in range(2):
        threads = [threading.Thread(target=run, args=(i, case)) for i, case in enumerate(cases)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for i, case in enumerate(cases):
            assert results[i] == model.generate(case["prompt"], case["max_tokens"], case["temperature"],
                                                case["top_k"], case["top_p"], case["seed"]), case
    h = wait_idle(server)
    assert (h["active"], h["queued"]) == (0, 0)


def test_full_queue_is_429_with_retry_after(tiny_run):
    slow = slowed(charnn.load(tiny_run), 0.005)
    with background_server({"tiny": slow}, ServeConfig(port=0, max_batch=2, max_queue=1, max_n=2)) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
        busy = c.completions.create(model="tiny", prompt="RO", max_tokens=400, n=2, stream=True)
        next(iter(busy))  # two streams running: the batch is full
        waiting = c.completions.create(model="tiny", prompt="RO", max_tokens=400, stream=True)  # queued
        with pytest.raises(openai.RateLimitError) as e:
            c.completions.create(model="tiny", prompt="RO", max_tokens=5)
        assert e.value.status_code == 429 and e.value.response.headers["retry-after"] == "1"
        assert "--max-queue" in e.value.body["message"]
        busy.close()
        waiting.close()
        h = wait_idle(url)
        assert (h["active"], h["queued"]) == (0, 0)
        assert c.completions.create(model="tiny", prompt="RO", max_tokens=5).choices[0].text


def test_timeout(tiny_run):
    slow = slowed(charnn.load(tiny_run), 0.005)
    with background_server({"tiny": slow}, ServeConfig(port=0, timeout=0.3)) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
        with pytest.raises(openai.InternalServerError) as e:
            c.completions.create(model="tiny", prompt="RO", max_tokens=500)
        assert e.value.status_code == 503 and e.value.body["code"] == "timeout"
        with pytest.raises(openai.APIError, match="--timeout"):
            for _ in c.completions.create(model="tiny", prompt="RO", max_tokens=500, stream=True):
                pass
        h = wait_idle(url)
        assert (h["active"], h["queued"]) == (0, 0)
        assert h["generated"] < 2 * 500  # the streams were dropped, not run to the end


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_stops_generation(tiny_run, stream):
    slow = slowed(charnn.load(tiny_run), 0.002)
    with background_server({"tiny": slow}) as url:
        body = {"model": "tiny", "prompt": "RO", "max_tokens": 4000, "stream": stream}
        if stream:
            with httpx.stream("POST", f"{url}/v1/completions", json=body) as r:
                assert next(r.iter_lines()).startswith("data: ")
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{url}/v1/completions", json=body, timeout=0.3)
        h = wait_idle(url)
        assert (h["active"], h["queued"]) == (0, 0)
        assert h["generated"] < 2000  # 4000 steps of >= 2 ms would take 8 s


# --- running it ----------------------------------------------------------------------------------
def test_port_in_use_is_a_one_line_error(tiny_run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(tiny_run), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--port {port}" in err and "already in use" in err


def test_bad_flags_are_reported_together(tiny_run, capsys):
    assert main(["serve", str(tiny_run), "--max-n", "0", "--timeout", "-1", "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert "--max-n" in err and "--timeout" in err and "--port" in err and err.count("\n") == 1


def test_model_ids(tmp_path, tiny_run):
    assert model_ids([str(tiny_run)]) == {"run": tiny_run}
    assert model_ids([f"shakespeare={tiny_run}", str(tiny_run)]) == {"shakespeare": tiny_run, "run": tiny_run}
    with pytest.raises(CharnnError, match="both be model 'run'.*ID=RUN_DIR"):
        model_ids([str(tiny_run), str(tiny_run)])
    with pytest.raises(CharnnError, match="does not exist"):
        main_args = ["serve", str(tmp_path / "missing")]
        from charnn.serve.run import load_models

        load_models(main_args[1:])


def test_exposure_warning():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        assert exposure_warning(host, None) is None
    w = exposure_warning("0.0.0.0", None)
    assert "WARNING" in w and "NO API KEY" in w and "TLS" in w
    assert "NO API KEY" not in exposure_warning("0.0.0.0", "k")


@pytest.mark.slow
def test_cli_serve_starts_answers_and_stops(tiny_run):
    env = {**os.environ, "CHARNN_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "charnn", "serve", str(tiny_run), "--port", "0", "--quiet"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        url = re.search(r" on (http://\S+): playground", line).group(1)
        assert url.startswith("http://127.0.0.1:") and "API key required" in line
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert len(c.completions.create(model="run", prompt="RO", max_tokens=7).choices[0].text) == 7
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0 and "stopped" in out


def test_load_script_under_concurrency(tiny_run):
    """benchmarks/serve_load.py's client, small: every streamed request completes, nothing leaks."""
    import asyncio
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    with background_server({"tiny": charnn.load(tiny_run)}, ServeConfig(port=0, max_batch=8, max_queue=64, max_n=8)) as url:
        result = asyncio.run(load.phase(url, "tiny", clients=16, requests=48, max_tokens=40, seed0=0))
        h = wait_idle(url)
    assert result["completed"] == 48 and not result["errors"]
    assert result["chars"] == 48 * 40
    assert (h["active"], h["queued"]) == (0, 0) and h["generated"] == 48 * 40
