"""Byte-for-byte behaviour of the charnn CLI and server at two revisions, compared.

    python tests/behaviour_snapshot.py BASE_REV            # BASE_REV vs the working tree
    python tests/behaviour_snapshot.py BASE_REV --keep DIR # keep both snapshots for a look

Each side runs the same commands in fresh subprocesses whose `import charnn` is that side's
source tree (a `git worktree` of BASE_REV, or ./src): a fixed-seed `train` (few steps, then a
resume), `sample`, `eval --json` (both protocols, a text file), `memorize --json`, `capacity`,
`prepare`, a set of user errors, and a server completion (plain and streamed). What it
compares: stdout, stderr and exit status (wall times and speeds masked), and the files each
command writes (tensors of weights files, JSON with its timing fields masked). `--help` of
every subcommand is compared too but reported apart, since a help text may be corrected on
purpose. Exit status: 0 when everything but the help texts is identical.

Run it on one machine: the figures are identical there, not across CPUs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (
    "ROMEO: café au lait, naïve one?\n"
    "JULIET: über alles — and yet, no.\n"
    "First Citizen: we are accounted poor citizens, the patricians good.\n"
) * 60
TIMING = re.compile(r"\d[\d,]*(\.\d+)?\s*(s|ms|min|chars/s|characters/s)\b|\d+ min \d+(\.\d+)? s|\d+:\d\d(:\d\d)?")
# Timing: wall-clock readings, and the resume point's record of the run's pace (train/budget.py).
MASKED_KEYS = {"time", "chars_per_s", "wall_time", "elapsed", "seconds", "created", "id", "system_fingerprint",
               "step_times", "eval_seconds", "eval_probe", "save_seconds", "since", "probe_seconds", "step_seconds"}

TRAIN = ["--model", "lstm", "--hidden", "24", "--embed", "8", "--layers", "2", "--batch-size", "4",
         "--seq-len", "16", "--eval-every", "10", "--log-every", "5", "--dtype", "float32",
         "--threads", "1", "--seed", "7", "--quiet"]


def _mask_json(obj):
    if isinstance(obj, dict):
        return {k: ("<masked>" if k in MASKED_KEYS else _mask_json(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_mask_json(v) for v in obj]
    return obj


def _mask_text(text: str, work: Path) -> str:
    text = text.replace(str(work), "<work>")
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.dumps(_mask_json(json.loads(line)), sort_keys=True, ensure_ascii=False))
        except ValueError:
            lines.append(TIMING.sub("<t>", line))
    return "\n".join(lines)


def _mask_ids(text: str) -> str:
    text = re.sub(r'"created":\d+', '"created":0', re.sub(r'"cmpl-[0-9a-f]+"', '"cmpl-"', text))
    if "data: " not in text:
        return text
    status, _, text = text.partition(" ")
    # A stream: how the text is cut into events depends on timing, so compare what each
    # choice says in all (its text joined, its finish reason) and how the stream ends.
    choices: dict[int, list] = {}
    for line in text.splitlines():
        if line.startswith("data: {"):
            for c in json.loads(line[6:])["choices"]:
                got = choices.setdefault(c["index"], ["", None])
                got[0] += c["text"]
                got[1] = c["finish_reason"] or got[1]
    done = text.rstrip().endswith("data: [DONE]")
    return status + " " + json.dumps({"choices": choices, "done": done}, ensure_ascii=False)


def _file_digest(path: Path, work: Path) -> str:
    if path.suffix == ".safetensors":
        # The tensors, and the metadata's values apart from timing, reported separately (a
        # format may add metadata entries without changing a weight).
        import torch
        from safetensors import safe_open

        h = hashlib.sha256()
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            for k in sorted(f.keys()):
                h.update(k.encode())
                h.update(f.get_tensor(k).contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
        inner = json.loads(meta.get("meta", "{}"))
        inner.get("trainer", {}).pop("elapsed", None)
        shown = json.dumps(_mask_json(inner), sort_keys=True)
        return (f"tensors:{h.hexdigest()[:16]} meta:{hashlib.sha256(shown.encode()).hexdigest()[:16]} "
                f"keys:{','.join(sorted(meta))}")
    if path.suffix in (".json", ".jsonl", ".md"):
        return "text:" + hashlib.sha256(_mask_text(path.read_text("utf-8"), work).encode()).hexdigest()[:16]
    if path.suffix in (".png", ".onnx"):
        return "exists"  # rendering / exporter details are not charnn's behaviour
    return "bytes:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _tree(directory: Path, work: Path) -> dict:
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): _file_digest(p, work)
            for p in sorted(directory.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot(src: Path, work: Path) -> dict:
    """Run every command with `import charnn` from `src`; return what each did."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "COLUMNS": "100",
           "CHARNN_API_KEY": ""}
    env.pop("CHARNN_API_KEY")
    boot = f"import sys; sys.path.insert(0, {str(src)!r}); from charnn.cli import main; sys.exit(main(sys.argv[1:]))"
    out: dict[str, dict] = {}
    (work / "corpus.txt").write_text(TEXT, encoding="utf-8")
    (work / "other.txt").write_text(TEXT[::-1][:3000], encoding="utf-8")
    (work / "odd.txt").write_text("ROMEO: ☃ snow\n" * 50, encoding="utf-8")

    def run(name: str, *args: str, files: str | None = None) -> None:
        p = subprocess.run([sys.executable, "-c", boot, *args], cwd=work, env=env,
                           capture_output=True, text=True, timeout=600)
        out[name] = {"rc": p.returncode, "stdout": _mask_text(p.stdout, work),
                     "stderr": _mask_text(p.stderr, work)}
        if files:
            out[name]["files"] = _tree(work / files, work)

    check = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(src)!r}); "
                            "import charnn; print(charnn.__file__)"], env=env, capture_output=True, text=True)
    assert check.stdout.strip().startswith(str(src)), (check.stdout, check.stderr)

    # --- help texts (reported apart) ---
    for cmd in ["", "train", "sample", "eval", "export", "serve", "prepare", "memorize", "capacity"]:
        run(f"help {cmd}".strip(), *([cmd] if cmd else []), "--help")

    # --- train, resume, a run on the bundled corpus ---
    run("train", "train", "corpus.txt", "--out", "r1", *TRAIN, "--max-steps", "30", "--sample-chars", "80", files="r1")
    run("train half", "train", "corpus.txt", "--out", "r2", *TRAIN, "--max-steps", "15", "--sample-chars", "0")
    run("train resume", "train", "--resume", "r2", "--max-steps", "30", "--sample-chars", "80", "--quiet", files="r2")
    run("train gru windows", "train", "corpus.txt", "--out", "r3", *TRAIN, "--model", "gru", "--batching", "windows",
        "--max-steps", "12", "--sample-chars", "40", files="r3")
    run("train mingru", "train", "corpus.txt", "--out", "r4", *TRAIN, "--model", "mingru", "--max-steps", "12",
        "--sample-chars", "40", files="r4")
    run("train bundled", "train", "--out", "r5", *TRAIN, "--max-steps", "3", "--eval-every", "0",
        "--sample-chars", "40", files="r5")
    run("train preset list", "train", "--list-presets")

    # --- sample ---
    run("sample", "sample", "r1", "--seed", "3", "--length", "200", "--temperature", "0.8", "--top-k", "10",
        "--prime", "ROMEO:")
    run("sample n top-p", "sample", "r1", "--seed", "5", "--length", "60", "--top-p", "0.9", "--num-samples", "3",
        "--stop", "\n\n")
    run("sample greedy", "sample", "r4", "--seed", "1", "--length", "50", "--temperature", "0")
    run("sample torch backend", "sample", "r1", "--seed", "2", "--length", "80", "--backend", "torch")
    run("sample unknown skip", "sample", "r1", "--seed", "2", "--length", "30", "--prime", "☃ROMEO",
        "--unknown", "skip")

    # --- eval ---
    run("eval", "eval", "r1", "--json")
    run("eval windows", "eval", "r1", "--json", "--protocol", "windows", "--window", "64")
    run("eval text", "eval", "r1", "--text", "other.txt")
    run("eval text json", "eval", "r3", "--text", "other.txt", "--json", "--protocol", "stateful")
    run("eval replace", "eval", "r1", "--text", "odd.txt", "--unknown", "replace", "--json")

    # --- prepare, train on it, eval ---
    run("prepare", "prepare", "corpus.txt", "--out", "prep", "--quiet", files="prep")
    run("train prepared", "train", "prep", "--out", "r6", *TRAIN, "--max-steps", "10", "--sample-chars", "20", files="r6")
    run("eval prepared", "eval", "r6", "--json")

    # --- the lab ---
    run("memorize", "memorize", "hello pytorch. how long can a rnn cell remember?", "--epochs", "60",
        "--hidden", "32", "--seed", "2", "--json")
    run("memorize text", "memorize", "hello charnn", "--epochs", "40", "--cell", "gru", "--seed", "1")
    run("memorize presets", "memorize", "--list-presets")
    run("capacity", "capacity", "--cells", "rnn,gru", "--hidden", "8", "--lengths", "5,10", "--seeds", "1",
        "--epochs", "30", "--kinds", "random", "--out", "cap", "--quiet", files="cap")

    # --- user errors: one line, exit 2 ---
    errors = {
        "no corpus": ["train", "missing.txt", "--out", "e1"],
        "bad hidden": ["train", "corpus.txt", "--hidden", "0", "--out", "e2"],
        "bad flags": ["train", "corpus.txt", "--lr", "-1", "--batch-size", "0", "--out", "e3"],
        "bad preset": ["train", "--preset", "nope"],
        "resume change": ["train", "--resume", "r1", "--hidden", "64"],
        "out taken": ["train", "corpus.txt", "--out", "r1", "--max-steps", "1"],
        "sample missing": ["sample", "nope"],
        "sample bad temp": ["sample", "r1", "--temperature", "-1", "--top-p", "0"],
        "sample unknown": ["sample", "r1", "--prime", "☃"],
        "eval missing text": ["eval", "r1", "--text", "nope.txt"],
        "eval protocol": ["eval", "r1", "--protocol", "nope"],
        "memorize bad": ["memorize", "abc", "--hidden", "-3"],
        "capacity bad": ["capacity", "--cells", "nope", "--out", "cap2"],
        "serve bad port": ["serve", "r1", "--port", "70000"],
        "unknown flag": ["sample", "r1", "--nope"],
    }
    for name, args in errors.items():
        run(f"error: {name}", *args)

    # --- one server, a completion plain and streamed ---
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", boot, "serve", "r1", "mingru=r4", "--port", str(port), "--quiet"],
                              cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("server did not start: " + (server.stderr.read() if server.poll() is not None else "")) from None
                time.sleep(0.2)

        def post(body: dict) -> str:
            req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return f"{r.status} " + r.read().decode()
            except urllib.error.HTTPError as e:
                return f"{e.code} " + e.read().decode()

        def get(path: str) -> str:
            with urllib.request.urlopen(base + path, timeout=30) as r:
                return f"{r.status} " + r.read().decode()

        calls = {
            "completion": {"model": "r1", "prompt": "ROMEO:", "max_tokens": 120, "temperature": 0.7, "seed": 4},
            "completion n": {"model": "mingru", "prompt": ["a", "JULIET"], "max_tokens": 40, "n": 2, "seed": 9,
                             "top_p": 0.8, "stop": ["\n"]},
            "completion stream": {"model": "r1", "prompt": "First", "max_tokens": 50, "seed": 1, "stream": True},
            "completion bad": {"model": "r1", "prompt": "x", "max_tokens": -1},
            "completion unknown model": {"model": "nope", "prompt": "x"},
        }
        for name, body in calls.items():
            text = post(body)
            out[f"server: {name}"] = {"response": _mask_ids(text)}
        out["server: models"] = {"response": _mask_ids(get("/v1/models"))}
        out["server: page"] = {"sha": hashlib.sha256(get("/").encode()).hexdigest()[:16]}
    finally:
        server.terminate()
        server.wait(30)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="the revision to compare the working tree with")
    ap.add_argument("--keep", default=None, help="write both snapshots as JSON into this directory")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="charnn-behaviour-"))
    try:
        subprocess.run(["git", "worktree", "add", "--detach", str(tmp / "base"), args.base], cwd=ROOT,
                       check=True, capture_output=True)
        sides = {}
        for name, src in (("base", tmp / "base" / "src"), ("head", ROOT / "src")):
            work = tmp / f"work-{name}"
            work.mkdir()
            t0 = time.time()
            sides[name] = snapshot(src, work)
            print(f"{name}: {len(sides[name])} commands in {time.time() - t0:.0f} s", file=sys.stderr)
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for name, snap in sides.items():
                Path(args.keep, f"{name}.json").write_text(json.dumps(snap, indent=1, ensure_ascii=False))
        base, head = sides["base"], sides["head"]
        differ, help_differ = [], []
        for key in sorted(set(base) | set(head)):
            if base.get(key) != head.get(key):
                (help_differ if key.startswith("help") else differ).append(key)
        same = len(set(base) | set(head)) - len(differ) - len(help_differ)
        print(f"{same} identical, {len(differ)} different, {len(help_differ)} help texts different")
        for key in differ + help_differ:
            print(f"--- {key}")
            b, h = base.get(key, {}), head.get(key, {})
            for field in sorted(set(b) | set(h)):
                if b.get(field) != h.get(field):
                    print(f"  {field}:\n    base: {json.dumps(b.get(field), ensure_ascii=False)[:1500]}\n"
                          f"    head: {json.dumps(h.get(field), ensure_ascii=False)[:1500]}")
        return 1 if differ else 0
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "base")], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
