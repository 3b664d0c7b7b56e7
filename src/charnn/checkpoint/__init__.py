"""The run directory: the ONLY package that knows its format.

    runs/<name>/
      config.json        format version + the resolved model and training settings, and
                         what the corpus was (its files, length and SHA-256); a fine-tuned
                         run also its parent: path, SHA-256 of its weights file, step
      vocab.json         the versioned vocabulary (vocab.py)
      model.safetensors  weights of the best checkpoint (by validation loss)
      last.safetensors   the resume point: weights, optimizer moments, RNG states, the
                         carried hidden state, and (as JSON metadata) the trainer's counters
      metrics.jsonl      one JSON line per evaluation
      loss.png           the loss curve (when matplotlib is installed)
      step.onnx          optional: the one-step function for ONNX Runtime (charnn export);
      step-int8.onnx     it records the SHA-256 of the weights it was made from
      novelty.npy        optional, a cache: the suffix array of the training ids (charnn sample
      novelty.json       --novelty) and what it was built from (data/suffixarray.py)

Nothing is pickled: tensors go through safetensors, settings and counters are JSON, and
nothing here calls torch.load. Every file is written atomically (a temporary sibling,
flushed and fsynced, then os.replace), so a kill at any instant leaves the old file or the
new one, never a torn one; the resume point is a single file for the same reason.

Reading a run checks, for every consumer (sample, eval, serve, export, resume):
- each file is read only if it is a regular file, and only so many bytes (files.py);
- config.json: the JSON type and bounds of every model setting, and that the model fits in
  memory (modelcheck.py); vocab.json against config.json's digest; then config.json against
  the weights files' headers: as many weights as they hold, so that a wrong configuration
  never gets as far as allocating a model;
- a tensor file (tensorfile.py): its kind (best weights or resume point, so one copied over
  the other is named as such), its size against its header, its checksums ("sha256" covers
  the tensors, "checksum" every metadata entry as well: step, validation loss, vocabulary
  digest, trainer counters, optimizer settings), then the types of what the metadata says
  and that the weights are finite.

Compatibility: files written before "checksum" existed have only "sha256"; they still load,
their metadata validated but not checksummed. So a file whose "checksum" was removed loads
as such an older file. That is accepted on purpose: checksums catch accidents (a flipped
bit, a torn copy, an edit by mistake), not an attacker, who could recompute an unkeyed
SHA-256 anyway. Hostile files are met by validation instead: whatever a run directory
holds, reading it ends in a model or in one CharnnError line, never a traceback, a hang or
an unbounded allocation (tests/test_fuzz_run.py tries hundreds of cases).

Write faults (a full disk, a read-only or permission-denied directory) are one CharnnError
naming the file and the cause: an atomic write leaves the previous file intact, a failed
append is cut back, and create_run removes whatever it made before it failed.

The package: layout.py (the file names; what a write fault leaves), modelcheck.py (the
model settings of config.json), tensorfile.py (tensor files with checksums), resume.py (the
resume point); this module: the run directory, its best weights, its metrics log, and the
API every other module uses. Imports: errors, files, data.vocab, models.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from charnn.checkpoint.layout import (
    BEST,
    CONFIG,
    LAST,
    METRICS,
    PLOT,
    VOCAB,
    novelty_paths,
    onnx_path,
    plot_path,
    writing,
)
from charnn.checkpoint.modelcheck import (
    has_type,
    is_int,
    model_config,
)
from charnn.checkpoint.resume import (
    Checkpoint,
    has_checkpoint,
    load_checkpoint,
    restore_model,
    save_checkpoint,
)
from charnn.checkpoint.tensorfile import (
    FIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    RESUME_POINT,
    WEIGHTS,
    Shapes,
    check_finite,
    header,
    load_into,
    read_tensors,
    save_tensors,
)
from charnn.data.vocab import UNKNOWN_POLICIES, Vocab, vocab_digest
from charnn.errors import CharnnError
from charnn.files import (
    append_jsonl,
    atomic_write,
    check_version,
    make_directory,
    open_regular,
    path_kind,
    read_json,
    read_jsonl,
    reason,
    remove_directories,
    shown,
    write_json,
)
from charnn.models import CharLM, ModelConfig, build_model

__all__ = [
    "BEST", "CONFIG", "FORMAT_NAME", "FORMAT_VERSION", "LAST", "METRICS", "PLOT", "VOCAB", "Checkpoint",
    "LoadedRun", "RunFiles", "append_metrics", "create_run", "has_checkpoint", "load_checkpoint", "load_parent",
    "load_run", "novelty_paths", "onnx_path", "plot_path", "read_metrics", "read_run", "restore_model",
    "save_checkpoint", "save_weights", "truncate_metrics",
]


# --- the run directory ------------------------------------------------------------------------
@dataclass
class RunFiles:
    """What a run directory says about itself, parsed and checked."""

    path: Path
    model_config: ModelConfig
    train: dict  # the training settings as saved (train.py turns them into a TrainConfig)
    data: dict  # what the corpus was: sources, chars, sha256
    vocab: Vocab
    params: int = 0  # how many weights the model has (counted without building it)
    parent: dict | None = None  # a fine-tuned run's parent: {"path", "sha256", "step"}


def create_run(
    run_dir: str | Path, model_config: ModelConfig, train: dict, vocab: Vocab, data: dict,
    parent: dict | None = None,
) -> Path:
    """Start a run directory: config.json and vocab.json (and, fine-tuned, the `parent` record
    of load_parent). Refuses to overwrite another run; if it cannot finish, it removes what it made."""
    run_dir = Path(run_dir)
    kind = path_kind(run_dir)
    if kind == "dir" and path_kind(run_dir / CONFIG, follow=False) is not None:
        raise CharnnError(
            f"--out {run_dir} already holds a run; continue it with --resume {run_dir}, "
            f"or choose another --out"
        )
    if kind not in (None, "dir"):
        raise CharnnError(f"--out {run_dir} is a file; choose a directory")
    try:
        created = make_directory(run_dir)
    except OSError as e:
        raise CharnnError(f"cannot create --out {run_dir}: {reason(e)}") from None
    from charnn import __version__

    config = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "charnn": __version__,
        "vocab_sha256": vocab_digest(vocab),
        "model": model_config.to_dict(),
        "train": train,
        "data": data,
        **({"parent": parent} if parent is not None else {}),
    }
    path = run_dir / VOCAB
    try:
        atomic_write(path, vocab.to_json().encode())
        path = run_dir / CONFIG
        write_json(path, config)
    except OSError as e:
        if path.name == CONFIG:
            try:
                os.unlink(run_dir / VOCAB)
            except OSError:
                pass
        remove_directories(created)
        raise CharnnError(f"cannot write {path}: {reason(e)}; no run was created in --out {run_dir}") from None
    return run_dir


def _check_count(path: Path, shapes: Shapes, kind: str, params: int) -> None:
    prefix = "model." if kind == RESUME_POINT else ""
    held = sum(math.prod(s) for k, s in shapes.items() if k.startswith(prefix))
    if held != params:
        raise CharnnError(f"{path} does not match {CONFIG} (it holds {held:,} model weights, the model of "
                          f"{CONFIG} has {params:,}); restore the run's files")


# The settings that say which corpus and which split the run had, read back by evaluation as
# they are (the others go through the training settings' own checks when a run resumes).
_CORPUS_RECORD = {
    "corpus": ("a list of paths", lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v)),
    "encoding": ("a string", lambda v: isinstance(v, str)),
    "errors": ("a string", lambda v: isinstance(v, str)),
    "transliterate": ("a string", lambda v: isinstance(v, str)),
    "val_fraction": ("a number", lambda v: has_type(v, float)),
    "unknown": (f"one of {', '.join(UNKNOWN_POLICIES)}", lambda v: v in UNKNOWN_POLICIES),
}


def read_run(run_dir: str | Path) -> RunFiles:
    """Parse and check config.json and vocab.json of a run directory, against each other and
    against the weights files' headers, with clear errors; builds nothing."""
    run_dir = Path(run_dir)
    kind = path_kind(run_dir)
    if kind is None:
        raise CharnnError(f"run directory {run_dir} does not exist; train one with charnn train --out {run_dir}")
    if kind != "dir":
        raise CharnnError(f"{run_dir} is not a directory; give a run directory made by charnn train")
    cfg_path = run_dir / CONFIG
    if path_kind(cfg_path, follow=False) is None:
        raise CharnnError(f"{run_dir} is not a charnn run directory ({CONFIG} is missing)")
    cfg = check_version(read_json(cfg_path, "restore it, or retrain"), cfg_path, FORMAT_NAME, FORMAT_VERSION,
                        not_ours="is not a charnn run configuration", kind="run")
    config = model_config(cfg.get("model"), cfg_path, "restore it, or retrain")
    train, data = cfg.get("train"), cfg.get("data") or {}
    for name, section in (("train", train), ("data", data)):
        if not isinstance(section, dict):
            raise CharnnError(f'{cfg_path}: "{name}" must be a JSON object, got {shown(section)}; '
                              f"restore it, or retrain")
    wrong = [f"train.{k} must be {what}, got {shown(train[k])}" for k, (what, ok) in _CORPUS_RECORD.items()
             if k in train and not ok(train[k])]
    if wrong:
        raise CharnnError(f"{cfg_path} has invalid training settings ({'; '.join(wrong)}); restore it, or retrain")
    vocab = Vocab.load(run_dir / VOCAB)
    if cfg.get("vocab_sha256") != vocab_digest(vocab):
        raise CharnnError(f"{run_dir / VOCAB} does not match {CONFIG}: it was changed; restore it")
    if len(vocab) != config.vocab_size:
        raise CharnnError(f"{run_dir / VOCAB} has {len(vocab)} tokens but the model of {CONFIG} expects "
                          f"{config.vocab_size}; restore the run's files")
    params = config.parameter_count()
    for name in (BEST, LAST):  # a wrong configuration must not get as far as building a model
        try:
            shapes, kind = header(run_dir / name)
        except CharnnError:
            continue  # missing or unreadable: whoever loads that file says so
        _check_count(run_dir / name, shapes, kind, params)
    parent = cfg.get("parent")  # what it was made from; nothing reads it back but a restart from step 0
    return RunFiles(run_dir, config, dict(train), dict(data), vocab, params,
                    parent if isinstance(parent, dict) else None)


# --- the best weights -------------------------------------------------------------------------
def save_weights(run_dir: str | Path, model: CharLM, vocab: Vocab, info: dict) -> None:
    """Write model.safetensors, the weights every consumer of the run loads."""
    path = Path(run_dir) / BEST
    with writing(path):
        save_tensors(path, model.state_dict(), {"kind": WEIGHTS, "vocab_sha256": vocab_digest(vocab), **info})


@dataclass
class LoadedRun:
    files: RunFiles
    model: CharLM
    info: dict  # what the weights file says of itself: step, val_loss, ...


def _check_info(path: Path, info: dict, vocab: Vocab) -> None:
    if info.get("vocab_sha256") != vocab_digest(vocab):
        raise CharnnError(f"{path} was trained with another vocabulary than {VOCAB}; {FIX}")
    valid = {"step": lambda v: is_int(v) and v >= 0, "val_loss": lambda v: v is None or has_type(v, float),
             "protocol": lambda v: isinstance(v, str)}
    wrong = [f"{k} = {shown(info[k])}" for k, ok in valid.items() if k in info and not ok(info[k])]
    if wrong:
        raise CharnnError(f"{path} says what charnn never writes ({', '.join(wrong)}); {FIX}")


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """The model of a run (best weights), for sampling, evaluation, serving and export."""
    files = read_run(run_dir)
    path = files.path / BEST
    tensors, info = read_tensors(path, WEIGHTS, lambda shapes: _check_count(path, shapes, WEIGHTS, files.params))
    _check_info(path, info, files.vocab)
    check_finite(path, tensors)
    model = build_model(files.model_config)
    load_into(model, tensors, path)
    return LoadedRun(files, model.to(device).eval(), info)





def load_parent(run_dir: str | Path) -> tuple[LoadedRun, dict]:
    """A run to fine-tune from (`--init-from`): its model with its best weights, and the record
    the new run keeps of it: its path, the SHA-256 of its weights file (what `sha256sum`
    prints) and the step they are from. Every fault is one line naming --init-from."""
    try:
        loaded = load_run(run_dir)
        digest = hashlib.sha256()
        with open_regular(loaded.files.path / BEST, FIX) as (f, _):
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except CharnnError as e:
        raise CharnnError(f"--init-from {run_dir}: {e}") from None
    record = {"path": str(Path(run_dir).resolve()), "sha256": digest.hexdigest(), "step": loaded.info.get("step")}
    return loaded, record


# --- metrics ----------------------------------------------------------------------------------
_NUMBERS = ("time", "epoch", "lr", "train_loss", "chars_per_s", "val_loss", "val_bpc")


def append_metrics(run_dir: str | Path, record: dict) -> None:
    path = Path(run_dir) / METRICS
    with writing(path):
        append_jsonl(path, record)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The metrics records; a torn last line (a kill mid-append) or a malformed one is skipped."""
    records = read_jsonl(Path(run_dir) / METRICS, fix="restore it, or delete it (it is only a log)")
    number = lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))  # noqa: E731
    return [r for r in records if is_int(r.get("step")) and all(number(r.get(k)) for k in _NUMBERS)]


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop the records after `step` (written by a run that died after its last checkpoint)."""
    kept = [r for r in read_metrics(run_dir) if r["step"] <= step]
    path = Path(run_dir) / METRICS
    with writing(path):
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept).encode())



    return Path(run_dir) / PLOT
