"""charnn serve at its edges (issue 12): what a careless operator or a hostile client tries.

The API key guards everything that names a model (the OpenAPI document too); a key read
from a file with its newline still works, one HTTP cannot carry is refused at start-up; a
client that leaves while queued stops counting at once; a Host the server does not answer
to (DNS rebinding) is a 400; extreme sampling settings give text, not garbage; a malformed
body is reported as such, not as a parameter named after a byte offset.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from starlette.testclient import TestClient

import charnn
from charnn.cli import main
from charnn.errors import CharnnError, check_all
from charnn.serve.app import create_app
from charnn.serve.config import ServeConfig
from charnn.serve.run import background_server
from conftest import slowed

KEY = "fault-key-9"
SECRET = "secret-model-x"  # a model id that must not leak without the key


@pytest.fixture(scope="module")
def keyed(tiny_run):
    with background_server({SECRET: charnn.load(tiny_run)}, ServeConfig(port=0, api_key=KEY)) as url:
        yield url


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def is_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


# --- the API key ----------------------------------------------------------------------------------
def test_the_openapi_document_and_every_other_route_need_the_key(keyed):
    """Only the page and the health check are public, and neither names a model."""
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect", "/v1/models", "/nothing"):
        r = httpx.get(keyed + path)
        assert is_error(r, 401)["code"] == "invalid_api_key", path
        assert SECRET not in r.text and r.headers["www-authenticate"] == "Bearer"
    document = httpx.get(keyed + "/openapi.json", headers=auth())
    assert document.status_code == 200 and SECRET in document.text  # with the key: the models
    for path in ("/", "/health"):
        r = httpx.get(keyed + path)
        assert r.status_code == 200 and SECRET not in r.text, path
    # The page asks for the key itself: it lists the models through /v1/models with it.
    page = httpx.get(keyed + "/").text
    assert 'id="api_key"' in page and 'fetch("/v1/models", { headers: headers() })' in page


def test_a_key_with_surrounding_whitespace_is_stripped(tiny_run, monkeypatch, capsys):
    """A key read from a file keeps its newline ($(cat key.txt) drops it, < key.txt does not)."""
    assert ServeConfig(api_key=f"  {KEY}\n").api_key == KEY
    with background_server({"tiny": charnn.load(tiny_run)}, ServeConfig(port=0, api_key=f"{KEY}\r\n")) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in c.models.list().data] == ["tiny"]
        for header in (f"Bearer {KEY}", f"bearer   {KEY}", f"BEARER {KEY}"):
            assert httpx.get(url + "/v1/models", headers={"Authorization": header}).status_code == 200
        for header in (b"Bearer \xe9\xff", f"Bearer {KEY[:-1]}".encode(), b"Bearer"):
            r = httpx.get(url + "/v1/models", headers={"Authorization": header})
            assert is_error(r, 401)["code"] == "invalid_api_key", header
    assert "surrounding whitespace stripped" in _help(capsys)


@pytest.mark.parametrize("key", ["cl\u00e9-s3cr3t", "tab\ts3cr3t", "bell\x07s3cr3t", "\u00a0s3cr3t", "s3\u200bcr3t"])
def test_a_key_http_cannot_carry_is_refused_at_start_up(key, tmp_path, capsys, monkeypatch):
    """One line, exit 2, that names the problem and not the key; from the flag or the environment."""
    with pytest.raises(CharnnError, match="--api-key"):
        check_all(ServeConfig(api_key=key).problems())
    # (A run directory that does not exist: were the key accepted, start-up would stop there.)
    missing = str(tmp_path / "missing")
    assert main(["serve", missing, "--api-key", key]) == 2
    monkeypatch.setenv("CHARNN_API_KEY", key)
    assert main(["serve", missing]) == 2
    for err in capsys.readouterr().err.splitlines():
        assert "--api-key" in err and "printable ASCII" in err and "s3" not in err, err


def test_an_empty_key_is_refused(capsys, tmp_path):
    assert main(["serve", str(tmp_path / "missing"), "--api-key", " \n"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--api-key must not be empty" in err


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    return " ".join(capsys.readouterr().out.split())


# --- a client that leaves while queued ------------------------------------------------------------
@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_the_queue_stops_counting_at_once(tiny_run, stream):
    slow = slowed(charnn.load(tiny_run), 0.01)
    config = ServeConfig(port=0, max_batch=2, max_queue=1, max_n=2)
    with background_server({"tiny": slow}, config) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
        busy = c.completions.create(model="tiny", prompt="RO", max_tokens=4000, n=2, stream=True)
        next(iter(busy))  # two streams running for ~40 s: the batch is full
        body = {"model": "tiny", "prompt": "RO", "max_tokens": 50, "stream": stream}
        if stream:
            with httpx.stream("POST", f"{url}/v1/completions", json=body) as r:
                assert r.status_code == 200
                assert _until(url, lambda h: h["queued"] == 1)
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{url}/v1/completions", json=body, timeout=0.5)
        # It left: it is no longer waiting, though the batch has not moved.
        assert _until(url, lambda h: h["queued"] == 0 and h["active"] == 2), httpx.get(url + "/health").json()
        # Its place is free: the next request waits for it rather than meeting a 429.
        with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            assert _until(url, lambda h: h["queued"] == 1)
        busy.close()
        assert _until(url, lambda h: h["queued"] == 0 and h["active"] == 0)


def _until(url: str, ok, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while not ok(httpx.get(url + "/health").json()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- the Host header (DNS rebinding) --------------------------------------------------------------
def test_a_loopback_server_answers_only_loopback_host_names(tiny_run):
    with background_server({"tiny": charnn.load(tiny_run)}) as url:
        port = url.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}",
                     f"LocalHost:{port}", f"localhost.:{port}"):
            assert httpx.get(url + "/health", headers={"Host": host}).status_code == 200, host
        for host in (f"evil.example:{port}", "evil.example", "localhost.evil.example", "127.0.0.1.nip.io",
                     f"[::2]:{port}", ""):
            for r in (httpx.get(url + "/", headers={"Host": host}),
                      httpx.post(url + "/v1/completions", json={"model": "tiny"}, headers={"Host": host})):
                error = is_error(r, 400)
                assert error["code"] == "host_not_allowed" and "--allowed-hosts" in error["message"], host


def test_allowed_hosts_replace_the_default(tiny_run):
    config = ServeConfig(port=0, allowed_hosts=["charnn.example", "proxy.local"])
    with background_server({"tiny": charnn.load(tiny_run)}, config) as url:
        for host, status in (("charnn.example", 200), ("Proxy.Local:8443", 200), ("127.0.0.1", 400),
                             ("other.example", 400)):
            assert httpx.get(url + "/health", headers={"Host": host}).status_code == status, host
    with background_server({"tiny": charnn.load(tiny_run)}, ServeConfig(port=0, allowed_hosts=["*"])) as url:
        assert httpx.get(url + "/health", headers={"Host": "anything.example"}).status_code == 200


def test_a_server_bound_beyond_loopback_answers_any_host(tiny_run):
    """It is reachable by address anyway (and warns); the allow-list is there to be set."""
    app = create_app({"tiny": charnn.load(tiny_run)}, ServeConfig(host="0.0.0.0"))
    r = TestClient(app, base_url="http://some.name.example").get("/health")
    assert r.status_code == 200
    assert ServeConfig(host="0.0.0.0").host_allow_list() is None
    assert ServeConfig(host="127.0.0.5").host_allow_list() == {"localhost", "127.0.0.1", "[::1]", "127.0.0.5"}
    assert ServeConfig(host="::1").host_allow_list() == {"localhost", "127.0.0.1", "[::1]"}


@pytest.mark.parametrize("hosts", [["http://x.example"], ["x.example/path"], ["a b"], ["x.example:80"],
                                   ["ok.example", "caf\u00e9.example"]])
def test_bad_allowed_hosts_are_one_line(hosts, tmp_path, capsys):
    with pytest.raises(CharnnError, match="--allowed-hosts"):
        check_all(ServeConfig(allowed_hosts=hosts).problems())
    assert main(["serve", str(tmp_path / "missing"), "--allowed-hosts", ",".join(hosts)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allowed-hosts" in err


# --- sampling at float32's edges ------------------------------------------------------------------
def test_extreme_sampling_settings_give_text_not_garbage(keyed):
    c = openai.OpenAI(base_url=keyed + "/v1", api_key=KEY, max_retries=0)

    def text(**kwargs) -> str:
        args = {"model": SECRET, "prompt": "RO", "max_tokens": 600, "seed": 1, **kwargs}
        return c.completions.create(**args).choices[0].text

    # Far beyond float32 (3.4e38): as flat as any huge temperature, so the same draws as 1e30.
    uniform = text(temperature=1e30)
    assert len(set(uniform)) > 20  # ~30 characters, each about equally likely
    for t in (1e39, 1e300, 1.7976931348623157e308):
        assert text(temperature=t) == uniform, t
    # A top_p below float32's smallest number keeps the most likely character: greedy.
    assert text(top_p=1e-50) == text(top_p=1e-30) == text(temperature=0)
    for raw in (b"1e400", b"NaN", b"Infinity", b"-1e400"):  # not finite: refused
        body = b'{"model": "%s", "prompt": "RO", "temperature": %s}' % (SECRET.encode(), raw)
        r = httpx.post(keyed + "/v1/completions", content=body,
                       headers={**auth(), "Content-Type": "application/json"})
        assert is_error(r, 400)["param"] == "temperature", raw


# --- messages -------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b'{"model": "m", "prompt": x}', b"{not json", b'{"model": "m",', b"\xff\xfe"])
def test_a_malformed_body_is_reported_as_such(keyed, body):
    r = httpx.post(keyed + "/v1/completions", content=body, headers={**auth(), "Content-Type": "application/json"})
    error = is_error(r, 400)
    assert error["param"] is None, error
    assert "not valid JSON" in error["message"], error
