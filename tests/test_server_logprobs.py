"""/v1/completions with logprobs and echo, through the real OpenAI client (and raw HTTP).

The numbers are checked against the model's log-softmax computed here from CharLM's raw
logits in one pass over prompt + completion, and echo scoring against `charnn score`.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch

import charnn
from charnn.serve.config import ServeConfig
from charnn.serve.run import background_server
from conftest import slowed

PROMPT = "ROMEO: café au lait"


@pytest.fixture(scope="module")
def model(tiny_run):
    return charnn.load(tiny_run)


@pytest.fixture(scope="module")
def server(tiny_run):
    config = ServeConfig(port=0, max_tokens=256, max_prompt=400, max_n=4)
    with background_server({"tiny": charnn.load(tiny_run)}, config) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=30)


def log_softmax_of(model, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (T,) of `text` and the model's log-probabilities (T - 1, V) of each next character."""
    ids = torch.as_tensor(model.vocab.encode(text))
    with torch.no_grad():
        logits, _ = model.model(ids[None, :-1])
    return ids, torch.log_softmax(logits[0].double(), dim=-1)


def check_against_model(model, text: str, lp: dict, first: int, k: int) -> None:
    """lp's tokens are text[first:], each scored as the model scores it after text[:j]."""
    ids, ref = log_softmax_of(model, text)
    n_chars = len(model.vocab.chars)
    assert "".join(lp["tokens"]) == text[first:]
    assert lp["text_offset"] == list(range(first, len(text)))
    for j, token, got, top in zip(range(first, len(text)), lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        if j == 0:
            assert got is None and top is None
            continue
        assert got == pytest.approx(float(ref[j - 1, ids[j]]), abs=1e-5)
        best = torch.topk(ref[j - 1, :n_chars], k)
        want = {model.vocab.chars[i]: float(v) for i, v in zip(best.indices.tolist(), best.values.tolist())}
        assert set(top) == set(want) | {token} and len(top) <= k + 1
        for c, v in want.items():
            assert top[c] == pytest.approx(v, abs=1e-5)


def test_logprobs_of_generated_and_echoed_characters_are_the_models(client, model):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, logprobs=3, echo=True,
                                  temperature=0.7, top_p=0.9, seed=4)
    c = r.choices[0]
    assert c.text.startswith(PROMPT) and len(c.text) == len(PROMPT) + 40
    check_against_model(model, c.text, c.logprobs.model_dump(), 0, 3)
    # Without echo: only the completion, its offsets still counted from the start of the prompt.
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, logprobs=3, temperature=0.7,
                                  top_p=0.9, seed=4)
    assert PROMPT + r.choices[0].text == c.text
    check_against_model(model, c.text, r.choices[0].logprobs.model_dump(), len(PROMPT), 3)


def test_logprobs_do_not_depend_on_the_sampling_settings(client, model):
    """Of the model's raw distribution: not of the tempered, truncated one a character was drawn from."""
    greedy = PROMPT + model.generate(PROMPT, 30, temperature=0)
    for settings in ({"temperature": 0}, {"extra_body": {"top_k": 1}}, {"temperature": 3.0, "top_p": 0.5},
                     {"temperature": 0.2}):
        r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, logprobs=0, echo=True,
                                      seed=1, **settings)
        text, lp = r.choices[0].text, r.choices[0].logprobs
        assert text == greedy or "top_p" in settings or "temperature" in settings and settings["temperature"]
        assert all(len(t) == 1 for t in lp.top_logprobs[1:])  # logprobs 0: the chosen character only
        check_against_model(model, text, lp.model_dump(), 0, 0)


def test_echo_scoring_equals_charnn_score(client, model):
    """max_tokens 0, echo, logprobs 1: the text scored, as `charnn score` scores it."""
    text = (PROMPT + "\nJULIET: über alles — and yet, no.\n") * 3
    r = client.completions.create(model="tiny", prompt=text, max_tokens=0, echo=True, logprobs=1)
    c = r.choices[0]
    assert c.text == text and c.finish_reason == "length" and r.usage.completion_tokens == 0
    doc = model.score(text, top=1)
    assert c.logprobs.tokens == [p["char"] for p in doc["positions"]]
    assert c.logprobs.token_logprobs[0] is None
    assert c.logprobs.token_logprobs[1:] == pytest.approx([p["logprob"] for p in doc["positions"][1:]], abs=2e-6)
    assert -sum(c.logprobs.token_logprobs[1:]) == pytest.approx(doc["total_nats"], rel=1e-6)
    for top, p in zip(c.logprobs.top_logprobs[1:], doc["positions"][1:]):
        assert p["top"][0][0] in top


def test_next_character_menu(client, model):
    """The playground's co-writing call: max_tokens 1, logprobs 5 (greedy: exactly 5)."""
    r = client.completions.create(model="tiny", prompt="ROMEO", max_tokens=1, logprobs=5, temperature=0)
    lp = r.choices[0].logprobs
    assert lp.tokens == [r.choices[0].text] and lp.text_offset == [5]
    top = lp.top_logprobs[0]
    assert len(top) == 5 and max(top, key=top.get) == r.choices[0].text
    ids, ref = log_softmax_of(model, "ROMEO" + r.choices[0].text)
    assert sorted(top.values(), reverse=True) == pytest.approx(torch.topk(ref[-1], 5).values.tolist(), abs=1e-5)


def test_stop_strings_cut_the_logprobs_with_the_text(client, model):
    full = model.generate("JULIET", 120, temperature=0)
    stop = full[30:32]
    r = client.completions.create(model="tiny", prompt="JULIET", max_tokens=120, temperature=0, stop=stop,
                                  logprobs=2, echo=True)
    c = r.choices[0]
    assert c.text == "JULIET" + full[: full.index(stop)] and c.finish_reason == "stop"
    check_against_model(model, c.text, c.logprobs.model_dump(), 0, 2)


def test_streamed_logprobs_are_the_same_as_in_one_body(tiny_run, model):
    slow = slowed(charnn.load(tiny_run), 0.002)  # so that the text arrives in many chunks
    with background_server({"tiny": slow}) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        args = dict(model="tiny", prompt=["ROMEO", "JULIET: ü"], max_tokens=60, n=2, seed=3, logprobs=2,
                    echo=True, stop=["\n\n"])
        whole = c.completions.create(**args)
        texts: dict[int, str] = {}
        merged: dict[int, dict] = {}
        chunks = 0
        for chunk in c.completions.create(stream=True, **args):
            for ch in chunk.choices:
                chunks += 1
                texts[ch.index] = texts.get(ch.index, "") + ch.text
                m = merged.setdefault(ch.index, {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                                 "text_offset": []})
                if ch.logprobs is not None:
                    for key, values in ch.logprobs.model_dump().items():
                        m[key] += values
                    assert "".join(ch.logprobs.tokens) == ch.text  # each chunk carries its characters'
    assert chunks > 8
    for choice in whole.choices:
        assert texts[choice.index] == choice.text
        assert merged[choice.index] == choice.logprobs.model_dump()
        prompt = ["ROMEO", "JULIET: ü"][choice.index // 2]
        check_against_model(model, choice.text, choice.logprobs.model_dump(), 0, 2)
        assert choice.text.startswith(prompt)


def test_unknown_prompt_characters_keep_the_offsets_of_the_echoed_text(server, model):
    prompt = "ROMEO 😀 says: Zoo"  # 😀 and Z are outside the vocabulary
    for unknown in ("skip", "replace"):
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 5, "echo": True, "logprobs": 1,
                "temperature": 0, "unknown": unknown}
        r = httpx.post(f"{server}/v1/completions", json=body)
        assert r.status_code == 200, r.text
        c = r.json()["choices"][0]
        lp = c["logprobs"]
        assert c["text"].startswith(prompt)
        assert all(c["text"][o] == t for o, t in zip(lp["text_offset"], lp["tokens"]))
        kept = [ch for ch in prompt if unknown == "replace" or model.vocab.has(ch)]
        assert lp["tokens"][: len(kept)] == kept and len(lp["tokens"]) == len(kept) + 5
        assert lp["text_offset"][len(kept):] == list(range(len(prompt), len(prompt) + 5))


def test_an_empty_prompt_starts_after_a_newline_and_echoes_nothing(server):
    r = httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": "", "max_tokens": 3,
                                                     "echo": True, "logprobs": 1, "seed": 2})
    c = r.json()["choices"][0]
    assert r.status_code == 200 and len(c["text"]) == 3
    assert c["logprobs"]["tokens"] == list(c["text"]) and c["logprobs"]["text_offset"] == [0, 1, 2]
    assert all(v is not None for v in c["logprobs"]["token_logprobs"])  # all conditioned on "\n"
    r = httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": "", "max_tokens": 0,
                                                     "echo": True, "logprobs": 1})
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"]["tokens"] == []


def test_logprobs_bounds_and_the_document(server):
    for bad in (6, -1, 2.0, "3", True):
        r = httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": "RO", "logprobs": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs", bad
    doc = httpx.get(f"{server}/openapi.json").json()
    props = doc["components"]["schemas"]["CompletionRequest"]["properties"]
    number = next(b for b in props["logprobs"]["anyOf"] if b["type"] == "integer")
    assert (number["minimum"], number["maximum"]) == (0, 5)
    choice = doc["components"]["schemas"]["Choice"]["properties"]["logprobs"]
    assert any(b.get("$ref", "").endswith("/Logprobs") for b in choice["anyOf"])
    # A plain request still answers "logprobs": null.
    r = httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": "RO", "max_tokens": 2})
    assert r.json()["choices"][0]["logprobs"] is None


def test_echo_scoring_is_bounded_and_queued_like_a_completion(tiny_run):
    """A request that only scores a prompt still counts against --max-prompt and --max-n."""
    config = ServeConfig(port=0, max_prompt=50, max_n=2)
    with background_server({"tiny": charnn.load(tiny_run)}, config) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="tiny", prompt="R" * 51, max_tokens=0, echo=True, logprobs=1)
        assert e.value.body["param"] == "prompt"
        r = c.completions.create(model="tiny", prompt=["ROMEO", "JULIET"], max_tokens=0, echo=True, logprobs=1)
        assert [ch.text for ch in r.choices] == ["ROMEO", "JULIET"]
        assert [len(ch.logprobs.tokens) for ch in r.choices] == [5, 6]
        h = httpx.get(f"{url}/health").json()
        assert h["active"] == 0 and h["queued"] == 0 and h["generated"] == 0
        # json.dumps of a whole body: finite numbers only (JSON has no infinity).
        body = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "ROMEO", "max_tokens": 4,
                                                         "logprobs": 5, "echo": True}).text
        assert "Infinity" not in body and "NaN" not in body and json.loads(body)["choices"]
