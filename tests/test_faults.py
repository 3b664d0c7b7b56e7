"""Write and permission faults while a run is created, saved, resumed or read: each ends in one
line (exit 2) that names the file and the cause, the previous resume point stays intact and
resumable to a bit-identical result, and nothing half-made is left behind.

Faults are injected, so the tests run anywhere: a full disk through charnn.files' `os` (the
one place charnn writes files through), a missing permission or a read-only file system by
wrapping the file-system calls for the paths below one directory. Without root, the
permission tests use chmod itself; as root (which chmod does not stop) they inject EACCES.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import shutil
from pathlib import Path

import pytest

import charnn.files
from charnn import checkpoint, cli
from charnn.errors import CharnnError
from conftest import TINY_MODEL, TINY_TRAIN
from test_train import assert_identical

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc")

STEPS = 40


def flags(corpus, out) -> list[str]:
    settings = {**TINY_MODEL, **TINY_TRAIN, "max_steps": STEPS, "save_every": 10, "dtype": "float32"}
    return [str(corpus), "--out", str(out), "--quiet",
            *(x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v)))]


def run_cli(*argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, err.getvalue()


def assert_one_line(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    assert err.startswith("charnn: error: ") and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err


# --- a full disk -----------------------------------------------------------------------------
class DiskFull:
    """From the `nth` write of a file named `target` on, the disk is full: that write stops
    part-way with ENOSPC, and so does every write after it. It remembers what the resume
    point was when the disk filled up."""

    def __init__(self, target: str, nth: int) -> None:
        self.target, self.nth, self.seen = target, nth, 0
        self.full = False
        self.resume_point: bytes | None = None

    def fdopen(self, fd, mode="r", *args, **kwargs):
        f = os.fdopen(fd, mode, *args, **kwargs)
        if not any(c in mode for c in "wa+"):
            return f
        name = os.readlink(f"/proc/self/fd/{fd}")
        if Path(name).name == self.target or Path(name).name.startswith(f".{self.target}."):
            self.seen += 1
            if self.seen == self.nth:
                last = Path(name).parent / checkpoint.LAST
                self.resume_point = last.read_bytes() if last.exists() else None
                self.full = True
        return _Writer(f, self)


class _Writer:
    def __init__(self, f, disk: DiskFull) -> None:
        self._f, self._disk = f, disk

    def write(self, data) -> int:
        if self._disk.full:
            view = memoryview(data)
            self._f.write(view[: len(view) // 2])  # part of it got through
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def __enter__(self):
        self._f.__enter__()
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._f, name)


class _FilesOs:
    """charnn.files' view of `os`, with fdopen going through a DiskFull."""

    def __init__(self, disk: DiskFull) -> None:
        self.fdopen = disk.fdopen

    def __getattr__(self, name):
        return getattr(os, name)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The same run, never interrupted."""
    from conftest import TINY_TEXT

    root = tmp_path_factory.mktemp("straight")
    corpus = root / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    rc, err = run_cli("train", *flags(corpus, root / "run"))
    assert rc == 0, err
    return root / "run"


@pytest.mark.parametrize("target, nth", [("last.safetensors", 3), ("model.safetensors", 2), ("metrics.jsonl", 5)])
def test_disk_full_keeps_the_resume_point_and_resumes_exactly(straight, corpus_file, tmp_path, monkeypatch,
                                                               target, nth):
    run = tmp_path / "run"
    disk = DiskFull(target, nth)
    with monkeypatch.context() as m:
        m.setattr(charnn.files, "os", _FilesOs(disk))
        rc, err = run_cli("train", *flags(corpus_file, run))
    assert disk.full, "the disk never filled up"
    assert_one_line(rc, err, "No space left on device", str(run / target), f"charnn train --resume {run}")
    # The previous resume point is intact, nothing temporary is left, no metrics line is torn.
    assert (run / checkpoint.LAST).read_bytes() == disk.resume_point
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    text = (run / checkpoint.METRICS).read_text()
    assert text.endswith("\n") and len(checkpoint.read_metrics(run)) == text.count("\n")
    step = checkpoint.load_checkpoint(run).trainer["step"]
    assert 0 < step < STEPS
    rc, err = run_cli("train", "--resume", run, "--quiet")
    assert rc == 0, err
    assert_identical(straight, run)


def test_disk_full_while_creating_a_run_leaves_nothing(corpus_file, tmp_path, monkeypatch):
    out = tmp_path / "new" / "deeper" / "run"
    with monkeypatch.context() as m:
        m.setattr(charnn.files, "os", _FilesOs(DiskFull("vocab.json", 1)))
        rc, err = run_cli("train", *flags(corpus_file, out))
    assert_one_line(rc, err, "No space left on device", str(out))
    assert not (tmp_path / "new").exists()


# --- permissions and read-only file systems --------------------------------------------------
def _inside(path, root: Path) -> bool:
    try:
        p = os.path.abspath(os.fsdecode(path))
    except TypeError:  # a file descriptor
        return False
    return p.startswith(str(root) + os.sep)


def _writes(fn_name: str, args, kwargs) -> bool:
    if fn_name == "open":
        return bool(args[0] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)) if args else False
    if fn_name == "io.open":
        mode = args[0] if args else kwargs.get("mode", "r")
        return any(c in mode for c in "wax+")
    return fn_name in ("mkdir", "unlink", "replace", "rename", "rmdir")


@contextlib.contextmanager
def denied(root: Path, *, writes_only: bool, code: int = errno.EACCES):
    """The paths below `root` refuse access (reads and writes, or writes only) with `code`.

    Without root privileges and for EACCES this is chmod itself; otherwise the file-system
    calls that charnn and pathlib make are wrapped for the paths below `root`.
    """
    if os.geteuid() != 0 and code == errno.EACCES:
        mode = root.stat().st_mode
        root.chmod(0o555 if writes_only else 0o600)
        try:
            yield
        finally:
            root.chmod(mode)
        return
    originals = {name: getattr(os, name) for name in
                 ("open", "stat", "lstat", "mkdir", "scandir", "listdir", "unlink", "replace", "rename", "rmdir")}

    def wrap(name, fn):
        def guarded(path, *args, **kwargs):
            if _inside(path, root) and (not writes_only or _writes(name, args, kwargs)):
                raise OSError(code, os.strerror(code), os.fsdecode(path))
            return fn(path, *args, **kwargs)
        return guarded

    with pytest.MonkeyPatch.context() as m:
        for name, fn in originals.items():
            m.setattr(os, name, wrap(name, fn))
        m.setattr(builtins, "open", wrap("io.open", builtins.open))
        m.setattr(io, "open", wrap("io.open", io.open))
        yield


def test_run_directory_without_search_permission(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with denied(run, writes_only=False):
        for load in (checkpoint.read_run, checkpoint.load_run, checkpoint.load_checkpoint, charnn_load):
            with pytest.raises(CharnnError, match=rf"cannot read {run}/\S+: Permission denied"):
                load(run)
        assert_one_line(*run_cli("sample", run, "--length", "5"), "Permission denied", str(run))
        assert_one_line(*run_cli("eval", run), "Permission denied", str(run))


def charnn_load(run):
    import charnn

    return charnn.load(run)


def test_out_in_a_directory_without_write_permission(corpus_file, tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    with denied(parent, writes_only=True):
        assert_one_line(*run_cli("train", *flags(corpus_file, parent / "run")), "Permission denied",
                        str(parent / "run"))
    assert list(parent.iterdir()) == []


def test_out_exists_but_is_not_writable(corpus_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with denied(out, writes_only=True):
        assert_one_line(*run_cli("train", *flags(corpus_file, out)), "Permission denied", str(out))
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("code, words", [(errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")])
def test_resume_on_a_read_only_run_changes_nothing(corpus_file, tmp_path, code, words):
    run = tmp_path / "run"
    rc, err = run_cli("train", *flags(corpus_file, run), "--max-steps", "20")
    assert rc == 0, err
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with denied(run, writes_only=True, code=code):
        assert_one_line(*run_cli("train", "--resume", run, "--max-steps", "30", "--quiet"), words, str(run))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
