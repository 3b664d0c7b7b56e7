"""Mutation fuzz of run directories: whatever happened to a run's files, reading the run either
works or says what is wrong in one line (exit 2). Never a traceback, never a hang, never an
unbounded read, never a changed byte in the run.

From one tiny trained run, a fixed seed draws hundreds of cases. Each copies the run, breaks
one file (flipped bytes, truncation, appended junk, JSON values of the wrong type or of
absurd size, keys removed or added, files swapped or copied over each other, symbolic links
to /dev/zero, to another file or to nowhere, a pipe, a directory, a 1 TiB sparse file, and
hostile metadata re-signed with a valid checksum, as an attacker would) and reads it back
through every consumer: read_run, load_run, load_checkpoint (+ restore_model), read_metrics,
charnn.load + generate, and the CLI's `charnn sample RUN --length 5` and `charnn eval RUN`,
in-process for speed. Each case has a time limit, and the process an address-space limit,
so a hang or an unbounded read fails the test instead of the machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import resource
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import charnn
from charnn import checkpoint, cli
from charnn.errors import CharnnError

SEED = 1234
CASES = 500  # ~35 s on a busy 2-core machine
CASE_SECONDS = 20  # a case takes ~50 ms; only a hang comes near this
FILES = ("config.json", "vocab.json", "model.safetensors", "last.safetensors", "metrics.jsonl")
HOSTILE = ["x", "", None, True, False, 0, -1, 1.5, -0.25, 1e308, float("nan"), float("inf"), 10**6, 10**9,
           10**18, 2**70, [], [16], [1, "a"], {}, {"a": 1}, "a" * 100_000, "\n\u2028", "66", "\udcff"]


class Hang(BaseException):
    """A case ran past CASE_SECONDS (BaseException: no `except Exception` in charnn swallows it)."""


# --- mutations: each takes (rng, run directory, file name) and returns what it did ---------------
def _bytes(run: Path, name: str) -> bytearray:
    return bytearray((run / name).read_bytes())


def flip(rng, run, name):
    data = _bytes(run, name)
    where = [rng.randrange(len(data)) for _ in range(rng.randint(1, 4))]
    for i in where:
        data[i] ^= rng.randint(1, 255)
    (run / name).write_bytes(bytes(data))
    return f"flip bytes {where}"


def truncate(rng, run, name):
    data = _bytes(run, name)
    n = rng.choice([0, 1, 7, 8, 9, rng.randrange(len(data))])
    (run / name).write_bytes(bytes(data[:n]))
    return f"truncate to {n}"


def extend(rng, run, name):
    junk = rng.choice([b"\0" * 64, bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))), b"\n{}\n"])
    (run / name).write_bytes(bytes(_bytes(run, name)) + junk)
    return f"append {len(junk)} bytes"


def delete(rng, run, name):
    (run / name).unlink()
    return "delete"


def directory(rng, run, name):
    (run / name).unlink()
    (run / name).mkdir()
    return "directory"


def dev_zero(rng, run, name):
    (run / name).unlink()
    (run / name).symlink_to("/dev/zero")
    return "symlink to /dev/zero"


def fifo(rng, run, name):
    (run / name).unlink()
    os.mkfifo(run / name)
    return "named pipe"


def dangling(rng, run, name):
    (run / name).unlink()
    (run / name).symlink_to(run / "nowhere")
    return "dangling symlink"


def loop(rng, run, name):
    (run / name).unlink()
    (run / name).symlink_to(run / name)
    return "symlink to itself"


def sparse(rng, run, name):
    os.truncate(run / name, 1 << 40)  # 1 TiB that takes no disk space
    return "1 TiB sparse"


def swap(rng, run, name):
    other = rng.choice([f for f in (*FILES, "loss.png") if f != name])
    if rng.random() < 0.5:
        (run / name).write_bytes((run / other).read_bytes())
        return f"copy {other} over it"
    (run / name).unlink()
    (run / name).symlink_to(run / other)
    return f"symlink to {other}"


def _paths(doc, prefix=()):
    """Every (path, value) in a JSON document."""
    yield prefix, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:50]):
            yield from _paths(v, (*prefix, i))


def mutate_json(rng, doc):
    """A JSON document changed at one random place; returns (doc, what)."""
    paths = list(_paths(doc))
    path, _ = rng.choice(paths)
    op = rng.choice(["set", "set", "set", "delete", "add", "root"])
    if op == "root" or not path:
        value = rng.choice([[], "x", 5, None, [doc]])
        return value, f"document = {value!r:.40}"
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    if op == "delete":
        del parent[key]
        return doc, f"delete {'.'.join(map(str, path))}"
    if op == "add" and isinstance(parent, dict):
        parent[f"unknown_{rng.randrange(100)}"] = rng.choice(HOSTILE)
        return doc, f"add a key beside {'.'.join(map(str, path))}"
    parent[key] = rng.choice(HOSTILE)
    return doc, f"{'.'.join(map(str, path))} = {parent[key]!r:.40}"


def json_value(rng, run, name):
    doc, what = mutate_json(rng, json.loads((run / name).read_text()))
    (run / name).write_text(json.dumps(doc))
    return what


def json_deep(rng, run, name):
    depth = rng.choice([1000, 100_000])
    (run / name).write_text('{"format": ' + "[" * depth + "]" * depth + "}")
    return f"nested {depth} deep"


def metrics_line(rng, run, name):
    lines = (run / name).read_bytes().split(b"\n")
    i = rng.randrange(len(lines))
    choice = rng.randrange(4)
    if choice == 0:
        lines[i] = b"\xff\xfe not utf-8"
    elif choice == 1:
        lines[i] = b"[1, 2]"
    else:
        record = json.loads(lines[i] or lines[0])
        record, what = mutate_json(rng, record)
        lines[i] = json.dumps(record).encode()
    (run / name).write_bytes(b"\n".join(lines))
    return f"metrics line {i} ({choice})"


def _raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return st_load(data), json.loads(data[8 : 8 + n]).get("__metadata__", {})


def _sign(path: Path, tensors: dict[str, torch.Tensor], meta) -> None:
    """Write a tensor file as charnn does, checksums and all (charnn's own writer)."""
    if hasattr(checkpoint, "tensorfile"):
        checkpoint.tensorfile.save_tensors(path, tensors, meta)
    else:  # before the checkpoint package
        checkpoint._save_tensors(path, tensors, meta)


def header_bytes(rng, run, name):
    data = _bytes(run, name)
    n = int.from_bytes(data[:8], "little")
    if rng.random() < 0.3:
        value = rng.choice([0, 1, n - 1, n + 1, len(data), 2**63, 2**64 - 1])
        data[:8] = value.to_bytes(8, "little")
        (run / name).write_bytes(bytes(data))
        return f"header length = {value}"
    where = [8 + rng.randrange(n) for _ in range(rng.randint(1, 3))]
    for i in where:
        data[i] = rng.choice(b'0123456789{}[]",:. x')
    (run / name).write_bytes(bytes(data))
    return f"header bytes {where}"


def resigned_meta(rng, run, name):
    """An attacker's edit of the JSON metadata, with the checksums recomputed."""
    tensors, metadata = _raw(run / name)
    meta, what = mutate_json(rng, json.loads(metadata["meta"]))
    _sign(run / name, tensors, meta)
    return f"re-signed meta: {what}"


def resigned_tensors(rng, run, name):
    """An attacker's edit of the tensors, with the checksums recomputed."""
    tensors, metadata = _raw(run / name)
    meta = json.loads(metadata["meta"])
    key = rng.choice(sorted(tensors))
    op = rng.choice(["drop", "add", "reshape", "dtype", "nan", "big"])
    if op == "drop":
        del tensors[key]
    elif op == "add":
        tensors[rng.choice(["junk", "model.junk", "optim.x.y", "extra.rng.torch", "optim.99.exp_avg"])] = torch.ones(3)
    elif op == "reshape":
        tensors[key] = tensors[key].reshape(-1)[: max(1, tensors[key].numel() - 1)].clone()
    elif op == "dtype":
        tensors[key] = tensors[key].to(rng.choice([torch.float64, torch.float16, torch.int32, torch.uint8, torch.bool]))
    elif op == "nan":
        tensors[key] = torch.full_like(tensors[key], float("nan")) if tensors[key].is_floating_point() else tensors[key]
    else:
        tensors[key] = torch.zeros(1 << 20)
    _sign(run / name, tensors, meta)
    return f"re-signed tensors: {op} {key}"


def stripped(rng, run, name):
    """Metadata entries removed or changed, without re-signing."""
    tensors, metadata = _raw(run / name)
    key = rng.choice(sorted(metadata))
    if rng.random() < 0.5:
        del metadata[key]
        what = f"remove metadata {key}"
    else:
        metadata[key] = rng.choice(["", "x", "2", "{}", "[]", "null", '{"kind": "resume point"}'])
        what = f"metadata {key} = {metadata[key]!r}"
    (run / name).write_bytes(st_save(tensors, metadata=metadata))
    return what


GENERIC = [flip, flip, truncate, extend, delete, directory, dev_zero, fifo, dangling, loop, sparse, swap, swap]
SPECIFIC = {
    "config.json": [json_value] * 8 + [json_deep],
    "vocab.json": [json_value] * 6 + [json_deep],
    "model.safetensors": [header_bytes, header_bytes, resigned_meta, resigned_meta, resigned_tensors, stripped],
    "last.safetensors": [header_bytes, header_bytes, resigned_meta, resigned_meta, resigned_tensors, stripped],
    "metrics.jsonl": [metrics_line] * 4,
}


def _set(doc_path: list, value):
    """A mutation that sets one value (or `value(old)` when it is a function)."""
    def apply(rng, run, name):
        doc = json.loads((run / name).read_text())
        target = doc
        for k in doc_path[:-1]:
            target = target[k]
        target[doc_path[-1]] = new = value(target[doc_path[-1]]) if callable(value) else value
        (run / name).write_text(json.dumps(doc))
        return f"{'.'.join(doc_path)} = {new!r:.40}"
    return apply


def _copy_of(other: str):
    def apply(rng, run, name):
        (run / name).write_bytes((run / other).read_bytes())
        return f"copy {other} over it"
    return apply


# The cases of the issue, always among the first: wrong types, absurd sizes, files swapped.
NAMED = [
    ("config.json", _set(["model", "hidden"], 10**9)),
    ("config.json", _set(["model", "layers"], 10**6)),
    ("config.json", _set(["model", "dropout"], "x")),
    ("config.json", _set(["model"], "lstm")),
    ("config.json", _set(["model", "hidden"], [16])),
    ("config.json", _set(["model", "vocab_size"], str)),  # once "has 66 tokens but expects 66"
    ("config.json", _set(["train"], "x")),
    ("model.safetensors", _copy_of("last.safetensors")),
    ("last.safetensors", _copy_of("model.safetensors")),
    ("model.safetensors", dev_zero),
    ("model.safetensors", fifo),
    ("model.safetensors", sparse),
    ("metrics.jsonl", dev_zero),
    ("vocab.json", _set(["chars"], "abc")),
    ("vocab.json", _set(["specials"], [5])),
]


# --- what is checked -----------------------------------------------------------------------------
def snapshot(run: Path) -> dict:
    """Every entry of the run as it is: bytes of small files, links, kinds (never read a pipe)."""
    out = {}
    for entry in sorted(os.scandir(run), key=lambda e: e.name):
        st = os.lstat(entry.path)
        if entry.is_symlink():
            out[entry.name] = ("link", os.readlink(entry.path))
        elif entry.is_dir(follow_symlinks=False):
            out[entry.name] = ("dir", sorted(os.listdir(entry.path)))
        elif entry.is_file(follow_symlinks=False):
            if st.st_size <= 1 << 24:
                out[entry.name] = ("file", hashlib.sha256(Path(entry.path).read_bytes()).hexdigest())
            else:
                with open(entry.path, "rb") as f:
                    out[entry.name] = ("big", st.st_size, hashlib.sha256(f.read(1 << 20)).hexdigest())
        else:
            out[entry.name] = ("other", st.st_mode)
    return out


def library(fn) -> tuple[bool, str | None]:
    """(worked, problem): CharnnError with one non-empty line is an answer; anything else a problem."""
    try:
        fn()
        return True, None
    except Hang:
        raise
    except CharnnError as e:
        text = str(e)
        return False, None if len(text.splitlines()) == 1 else f"not one line: {text!r:.200}"
    except BaseException as e:  # noqa: BLE001 - what the test is for
        return False, f"{type(e).__name__}: {str(e)[:200]}"


def command(*argv: str) -> tuple[bool, str | None]:
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(list(argv))
    except Hang:
        raise
    except BaseException as e:  # noqa: BLE001
        return False, f"charnn {argv[0]}: {type(e).__name__}: {str(e)[:200]}"
    text = err.getvalue()
    if rc == 0:
        return True, None
    if rc == 2 and text.startswith("charnn: error: ") and len(text.splitlines()) == 1 and text.endswith("\n"):
        return False, None
    return False, f"charnn {argv[0]}: exit {rc}, stderr {text[-300:]!r}"


def read_everything(run: Path) -> tuple[int, list[str]]:
    """Read the run through every consumer; (how many worked, problems)."""
    results = []
    loaded = {}

    def load_run():
        loaded["run"] = checkpoint.load_run(run)

    def load_checkpoint():
        ck = checkpoint.load_checkpoint(run)
        if "run" in loaded:
            checkpoint.restore_model(loaded["run"].model, ck, run)

    def generate():
        text = charnn.load(run).generate("", 5, seed=0)
        assert isinstance(text, str) and len(text) <= 5, text

    for name, fn in [("read_run", lambda: checkpoint.read_run(run)), ("load_run", load_run),
                     ("load_checkpoint", load_checkpoint), ("read_metrics", lambda: checkpoint.read_metrics(run)),
                     ("charnn.load", generate)]:
        ok, problem = library(fn)
        results.append((ok, problem and f"{name}: {problem}"))
    results.append(command("sample", str(run), "--length", "5", "--seed", "1"))
    results.append(command("eval", str(run)))
    return sum(ok for ok, _ in results), [p for _, p in results if p]


@contextlib.contextmanager
def limits():
    """A per-case alarm (a hang fails the case) and a cap on the address space (an unbounded
    read fails with MemoryError instead of taking the machine's memory)."""
    def alarm(signum, frame):
        raise Hang(f"no answer within {CASE_SECONDS} s")

    old_handler = signal.signal(signal.SIGALRM, alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = used + (6 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)


def draw_cases(rng: random.Random) -> list[tuple[str, object]]:
    cases = list(NAMED)
    while len(cases) < CASES:
        name = rng.choice(FILES)
        cases.append((name, rng.choice(GENERIC + SPECIFIC[name])))
    return cases


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/proc/self/statm").exists(), reason="needs Linux")
def test_fuzz_run_directory(tiny_run, tmp_path):
    rng = random.Random(SEED)
    cases = draw_cases(rng)
    failures, loaded, refused = [], 0, 0
    started = time.perf_counter()
    with limits():
        for i, (name, mutation) in enumerate(cases):
            run = tmp_path / f"case{i}"
            shutil.copytree(tiny_run, run, symlinks=True)
            what = mutation(random.Random(rng.random()), run, name)
            before = snapshot(run)
            signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
            try:
                worked, problems = read_everything(run)
            except Hang as e:
                worked, problems = 0, [str(e)]
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if snapshot(run) != before:
                problems.append("the run directory changed")
            failures += [f"case {i} ({name}: {what}): {p}" for p in problems]
            loaded += worked == 7
            refused += worked < 7 and not problems
            shutil.rmtree(run)
    took = time.perf_counter() - started
    print(f"\nfuzz: {len(cases)} cases in {took:.0f} s: {loaded} read back whole, {refused} refused in one line "
          f"where they failed, {len({f.split(')')[0] for f in failures})} with problems")
    assert not failures, f"{len(failures)} problems, the first ones:\n" + "\n".join(failures[:25])
