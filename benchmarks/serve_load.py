"""Load test of `charnn serve`: many concurrent streaming clients against one server on 127.0.0.1.

    python benchmarks/serve_load.py [--run RUN_DIR] [--clients 32] [--requests 200] [--max-tokens 256]

It starts `charnn serve` in a subprocess on 127.0.0.1 and a free port (its own process, so the
clients here do not share its interpreter), then measures in one run:

  1. single stream: --single-requests requests one after another from one client;
  2. concurrent: --requests streaming requests from --clients clients at once.

For each phase: p50 / p99 time to first character (request sent -> first non-empty text
chunk), aggregate characters per second (all characters / the phase's wall time) and the
ratio concurrent / single (the target is >= 10 with 32 clients: continuous batching steps
all streams together). It checks that every request completed (every choice finished
with "length", every stream ended with [DONE], exactly --max-tokens characters each) and
that nothing leaked: afterwards the server has no active or queued stream, and its open
file descriptors and resident memory are back near where they started. Exit status 1 if a
check fails.

Without --run it trains a throwaway run with the default architecture for one step (the
weights do not matter for speed). Every request and loop here is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Prompts of different lengths, as real traffic has (prompts of equal length that arrive
# together are primed in one pass).
PROMPTS = ["ROMEO:\n", "JULIET:\n", "First Citizen:\n", "KING RICHARD III:\n", "O",
           "MENENIUS:\nWhat work's, my countrymen, in hand? Where go you\nWith bats and clubs?"]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def throwaway_run(root: Path) -> Path:
    import charnn

    out = root / "default-arch"
    print("training a throwaway run with the default architecture (1 step) ...", file=sys.stderr)
    charnn.train(out=str(out), max_steps=1, progress=False, sample_chars=0)
    return out


def start_server(run: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "charnn", "serve", str(run), "--port", "0", "--quiet", *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r" on (http://\S+): playground", line)
        if m:
            # Keep draining its stderr so that a chatty server never blocks on a full pipe.
            threading.Thread(target=lambda: [sys.stderr.write(x) for x in proc.stderr], daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    raise SystemExit(f"the server did not start: {' '.join(cmd)}")


def proc_stats(pid: int) -> dict:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = next(int(x.split()[1]) for x in open(f"/proc/{pid}/status") if x.startswith("VmRSS:"))
    return {"fds": fds, "rss_mib": rss / 1024}


async def one_request(client, url: str, model: str, max_tokens: int, seed: int) -> dict:
    body = {"model": model, "prompt": PROMPTS[seed % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 1.0,
            "seed": seed, "stream": True, "unknown": "skip"}
    sent = time.perf_counter()
    first = None
    chars, finish, done = 0, None, False
    async with client.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as r:
        if r.status_code != 200:
            return {"ok": False, "error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            msg = json.loads(data)
            if "error" in msg:
                return {"ok": False, "error": msg["error"]["message"]}
            for c in msg["choices"]:
                if c["text"] and first is None:
                    first = time.perf_counter()
                chars += len(c["text"])
                finish = c["finish_reason"] or finish
    end = time.perf_counter()
    ok = done and finish == "length" and chars == max_tokens
    return {"ok": ok, "ttfc": (first or end) - sent, "chars": chars, "seconds": end - sent,
            "error": None if ok else f"done={done} finish={finish} chars={chars}"}


async def phase(url: str, model: str, clients: int, requests: int, max_tokens: int, seed0: int) -> dict:
    import httpx

    todo = iter(range(requests))
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=300) as client:

        async def worker():
            for i in todo:
                results.append(await one_request(client, url, model, max_tokens, seed0 + i))

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(clients))), timeout=1800)
        wall = time.perf_counter() - started
    good = [r for r in results if r["ok"]]
    ttfc = [r["ttfc"] for r in good] or [float("nan")]
    return {
        "clients": clients, "requests": requests, "completed": len(good),
        "errors": [r["error"] for r in results if not r["ok"]][:5],
        "wall_s": wall, "chars": sum(r["chars"] for r in good),
        "chars_per_s": sum(r["chars"] for r in good) / wall,
        "ttfc_p50_ms": 1000 * statistics.median(ttfc), "ttfc_p99_ms": 1000 * percentile(ttfc, 99),
    }


async def health(url: str) -> dict:
    import httpx

    async with httpx.AsyncClient() as client:
        return (await client.get(f"{url}/health", timeout=10)).json()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="run directory to serve (default: a throwaway default-architecture run)")
    ap.add_argument("--clients", type=int, default=32, help="concurrent streaming clients (default: 32)")
    ap.add_argument("--requests", type=int, default=200, help="requests in the concurrent phase (default: 200)")
    ap.add_argument("--single-requests", type=int, default=10, help="requests in the single-stream phase (default: 10)")
    ap.add_argument("--max-tokens", type=int, default=256, help="characters per request (default: 256)")
    ap.add_argument("--server-arg", action="append", default=[], help="extra flag for charnn serve (repeatable)")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    ap.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or throwaway_run(Path(tmp))
        proc, url = start_server(run, args.server_arg)
        try:
            model = run.resolve().name
            asyncio.run(phase(url, model, 1, 2, 32, 10_000))  # warm up
            before = proc_stats(proc.pid)
            single = asyncio.run(phase(url, model, 1, args.single_requests, args.max_tokens, 0))
            many = asyncio.run(phase(url, model, args.clients, args.requests, args.max_tokens, 1000))
            time.sleep(0.5)
            after_health = asyncio.run(health(url))
            after = proc_stats(proc.pid)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    ratio = many["chars_per_s"] / single["chars_per_s"]
    checks = {
        "every request completed": single["completed"] == single["requests"] and many["completed"] == many["requests"],
        "no stream left active or queued": after_health["active"] == 0 and after_health["queued"] == 0,
        "file descriptors back to start (+-4)": abs(after["fds"] - before["fds"]) <= 4,
        f"aggregate >= 10x single with {args.clients} clients": ratio >= 10,
    }
    lines = [f"Model `{model}`, {args.max_tokens} characters per request, server on 127.0.0.1.", "",
             "| phase | clients | requests | completed | TTFC p50 | TTFC p99 | chars/s | wall |",
             "|---|---|---|---|---|---|---|---|"]
    for name, p in (("single stream", single), ("concurrent", many)):
        lines.append(f"| {name} | {p['clients']} | {p['requests']} | {p['completed']} | {p['ttfc_p50_ms']:.1f} ms | "
                     f"{p['ttfc_p99_ms']:.1f} ms | {p['chars_per_s']:,.0f} | {p['wall_s']:.1f} s |")
    lines += ["", f"Aggregate / single: **{ratio:.1f}x**; server RSS {before['rss_mib']:.0f} -> "
                  f"{after['rss_mib']:.0f} MiB, open fds {before['fds']} -> {after['fds']}.", ""]
    lines += [f"- {'ok' if ok else 'FAILED'}: {name}" for name, ok in checks.items()]
    for p in (single, many):
        lines += [f"  error: {e}" for e in p["errors"]]
    print("\n".join(lines))
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from common import append_section

        append_section("Serving under load", "\n".join(lines))
    if args.json:
        print(json.dumps({"single": single, "concurrent": many, "ratio": ratio, "before": before,
                          "after": after, "checks": checks}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
