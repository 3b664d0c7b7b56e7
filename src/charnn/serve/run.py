"""Running the server: load the runs, open the socket, warn when exposed, hand the app to uvicorn.

    serve(run_dirs, config)       what `charnn serve` calls: serves until Ctrl-C
    background_server(models)     a context manager serving from a thread (tests, benchmarks,
                                  notebooks); yields the base URL

A port in use or a host that does not resolve is a CharnnError (one line, exit 2), raised
before uvicorn starts. Anything but a loopback address prints a loud warning.

Imports: serve.app (create_app), serve.config, charnn.errors, charnn.infer.model (loading a run); uvicorn
only when a server starts.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from charnn.errors import CharnnError, check_all
from charnn.infer.model import CharModel
from charnn.infer.model import load as load_model
from charnn.serve.app import create_app
from charnn.serve.config import ServeConfig, is_loopback


# --- which runs, under which ids --------------------------------------------------------------
def model_ids(run_dirs: Sequence[str]) -> dict[str, Path]:
    """Model id -> run directory. An id is the directory's name; ID=RUN_DIR chooses another."""
    ids: dict[str, Path] = {}
    problems = []
    for arg in run_dirs:
        name, sep, path = arg.partition("=")
        if sep and name and not Path(arg).exists():
            mid, run = name, Path(path)
        else:
            run = Path(arg)
            mid = run.resolve().name
        if mid in ids:
            problems.append(f"two runs would both be model {mid!r} ({ids[mid]} and {run}); name them with "
                            f"ID=RUN_DIR, e.g. {mid}2={run}")
        ids[mid] = run
    check_all(problems)
    return ids


def load_models(
    run_dirs: Sequence[str], device: str = "cpu", backend: str = "auto", quantize: str = "none"
) -> dict[str, CharModel]:
    """Load every run once, through the checkpoint module, with its sampling engine."""
    return {mid: load_model(run, device, backend, quantize) for mid, run in model_ids(run_dirs).items()}


# --- where it listens -------------------------------------------------------------------------
def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The loud warning printed when the server is reachable from other machines."""
    if is_loopback(host):
        return None
    bar = "!" * 78
    lines = [bar, f"WARNING: charnn serve is listening on {host}: other machines can reach it.",
             "It speaks plain HTTP (no TLS): put it behind a reverse proxy with TLS for real use."]
    if api_key is None:
        lines.append("There is NO API KEY: anyone who can reach this port can use it. Pass --api-key.")
    return "\n".join([*lines, bar])


def open_socket(host: str, port: int) -> socket.socket:
    """A listening socket; a port in use (or a bad host) is a CharnnError, not a traceback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CharnnError(f"--host {host}: cannot resolve it ({e.strerror}); pass an address such as 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == 98 or "in use" in str(e):
            raise CharnnError(f"--port {port}: address {host}:{port} is already in use; stop the other "
                              f"server or pass another --port") from None
        raise CharnnError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


# --- serving ------------------------------------------------------------------------------------
def _uvicorn_server(app, quiet: bool):
    import uvicorn

    cfg = uvicorn.Config(app, log_level="warning" if quiet else "info", access_log=not quiet,
                         timeout_graceful_shutdown=5, lifespan="on")
    return uvicorn.Server(cfg)


def serve(run_dirs: Sequence[str], config: ServeConfig, quiet: bool = False) -> None:
    """Load the runs, listen, and serve until Ctrl-C."""
    check_all(config.problems())
    if config.threads:
        torch.set_num_threads(config.threads)  # before loading: ONNX Runtime sessions take it too
    models = load_models(run_dirs, config.device, config.backend, config.quantize)
    app = create_app(models, config)
    sock = open_socket(config.host, config.port)
    warning = exposure_warning(config.host, config.api_key)
    if warning:
        print(warning, file=sys.stderr)
    url = url_of(sock)
    print(f"charnn serve: {len(models)} model(s) ({', '.join(models)}) on {url}: playground {url}/, "
          f"API {url}/v1{' (API key required)' if config.api_key else ''}", file=sys.stderr, flush=True)
    try:
        _uvicorn_server(app, quiet).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down cleanly and re-raised the signal
        pass
    finally:
        sock.close()
    print("charnn serve: stopped", file=sys.stderr)


@contextmanager
def background_server(
    models: dict[str, CharModel], config: ServeConfig | None = None, quiet: bool = True
) -> Iterator[str]:
    """Serve `models` from a background thread on 127.0.0.1 and a free port; yields the base URL.

    For tests, benchmarks and notebooks:

        with background_server({"mine": charnn.load("runs/mine")}) as url:
            ...  # OpenAI(base_url=url + "/v1", api_key="-")
    """
    config = config or ServeConfig(port=0)
    app = create_app(models, config)
    sock = open_socket(config.host, config.port)
    server = _uvicorn_server(app, quiet)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
