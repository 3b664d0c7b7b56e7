"""The run directory: the ONLY module that knows its format.

    runs/<name>/
      config.json        format version + the resolved model and training settings, and
                         what the corpus was (its files, length and SHA-256)
      vocab.json         the versioned vocabulary (vocab.py)
      model.safetensors  weights of the best checkpoint (by validation loss)
      last.safetensors   the resume point: weights, optimizer moments, RNG states, the
                         carried hidden state, and (as JSON metadata) the trainer's counters
      metrics.jsonl      one JSON line per evaluation
      loss.png           the loss curve (when matplotlib is installed)
      step.onnx          optional: the one-step function for ONNX Runtime (charnn export);
      step-int8.onnx     it records the SHA-256 of the weights it was made from

Nothing is pickled: tensors go through safetensors, settings and counters are JSON, and
nothing here calls torch.load. Every file is written atomically (a temporary sibling,
flushed and fsynced, then os.replace), so a kill at any instant leaves the old file or the
new one, never a torn one; the resume point is a single file for the same reason. Each
weights file carries a SHA-256 of its tensors and of the vocabulary in its metadata, so a
truncated, tampered or mismatched file is reported instead of silently loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from charnn.data.vocab import Vocab, vocab_digest
from charnn.errors import CharnnError
from charnn.files import (
    append_jsonl,
    atomic_write,
    check_version,
    read_json,
    read_jsonl,
    write_json,
)
from charnn.models import CharLM, ModelConfig, build_model

FORMAT_NAME = "charnn-run"
FORMAT_VERSION = 1
CONFIG = "config.json"
VOCAB = "vocab.json"
BEST = "model.safetensors"
LAST = "last.safetensors"
METRICS = "metrics.jsonl"
PLOT = "loss.png"


# --- tensors with checksums -------------------------------------------------------------------
def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {"format": FORMAT_NAME, "version": str(FORMAT_VERSION), "meta": json.dumps(meta)}
    metadata["sha256"] = _digest(tensors)
    atomic_write(path, st_save(tensors, metadata=metadata))


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and JSON metadata of a file written by _save_tensors, verified."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CharnnError(f"{path} is missing; the run directory is incomplete") from None
    except OSError as e:
        raise CharnnError(f"cannot read {path}: {e.strerror}") from None
    try:
        tensors = st_load(data)
        n = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise CharnnError(
            f"{path} is truncated or corrupt ({e}); restore it, or retrain the run"
        ) from None
    if metadata.get("format") != FORMAT_NAME:
        raise CharnnError(f"{path} was not written by charnn; it cannot be loaded as a run file")
    if metadata.get("version") != str(FORMAT_VERSION):
        raise CharnnError(
            f"{path} has run format version {metadata.get('version')}; this charnn reads "
            f"version {FORMAT_VERSION}: upgrade charnn"
        )
    if metadata.get("sha256") != _digest(tensors):
        raise CharnnError(
            f"{path} fails its checksum: its tensors were changed after charnn wrote them; "
            f"restore the file, or retrain the run"
        )
    return tensors, {**json.loads(metadata["meta"]), "sha256": metadata["sha256"]}


# --- the run directory ------------------------------------------------------------------------
@dataclass
class RunFiles:
    """What a run directory says about itself, parsed and checked."""

    path: Path
    model_config: ModelConfig
    train: dict  # the training settings as saved (train.py turns them into a TrainConfig)
    data: dict  # what the corpus was: sources, chars, sha256
    vocab: Vocab


def create_run(
    run_dir: str | Path, model_config: ModelConfig, train: dict, vocab: Vocab, data: dict
) -> Path:
    """Start a run directory: config.json and vocab.json. Refuses to overwrite another run."""
    run_dir = Path(run_dir)
    if (run_dir / CONFIG).exists():
        raise CharnnError(
            f"--out {run_dir} already holds a run; continue it with --resume {run_dir}, "
            f"or choose another --out"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise CharnnError(f"--out {run_dir} is a file; choose a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharnnError(f"cannot create --out {run_dir}: {e.strerror}") from None
    atomic_write(run_dir / VOCAB, vocab.to_json().encode())
    from charnn import __version__

    write_json(
        run_dir / CONFIG,
        {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "charnn": __version__,
            "vocab_sha256": vocab_digest(vocab),
            "model": model_config.to_dict(),
            "train": train,
            "data": data,
        },
    )
    return run_dir


def read_run(run_dir: str | Path) -> RunFiles:
    """Parse config.json and vocab.json of a run directory, with clear errors."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CharnnError(f"run directory {run_dir} does not exist; train one with charnn train --out {run_dir}")
    cfg_path = run_dir / CONFIG
    if not cfg_path.is_file():
        raise CharnnError(f"{run_dir} is not a charnn run directory ({CONFIG} is missing)")
    cfg = check_version(read_json(cfg_path, "restore it, or retrain"), cfg_path, FORMAT_NAME, FORMAT_VERSION,
                        not_ours="is not a charnn run configuration", kind="run")
    try:
        model_config = ModelConfig.from_dict(dict(cfg["model"]), str(cfg_path))
        train = dict(cfg["train"])
        data = dict(cfg.get("data") or {})
    except (KeyError, TypeError) as e:
        raise CharnnError(f"{cfg_path} is incomplete or malformed ({e}); restore it, or retrain") from None
    vocab = Vocab.load(run_dir / VOCAB)
    if cfg.get("vocab_sha256") != vocab_digest(vocab):
        raise CharnnError(f"{run_dir / VOCAB} does not match {CONFIG}: it was changed; restore it")
    if len(vocab) != model_config.vocab_size:
        raise CharnnError(f"{run_dir / VOCAB} has {len(vocab)} tokens but the model expects {model_config.vocab_size}")
    return RunFiles(run_dir, model_config, train, data, vocab)


def save_weights(run_dir: str | Path, model: CharLM, vocab: Vocab, info: dict) -> None:
    """Write model.safetensors, the weights every consumer of the run loads."""
    meta = {"vocab_sha256": vocab_digest(vocab), **info}
    _save_tensors(Path(run_dir) / BEST, model.state_dict(), meta)


def _load_into(model: CharLM, tensors: dict[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or extra or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}"
            for what, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
            if keys
        )
        raise CharnnError(f"{source} does not match {CONFIG} ({detail}); restore the run's files")
    model.load_state_dict(tensors)


@dataclass
class LoadedRun:
    files: RunFiles
    model: CharLM
    info: dict  # what the weights file says of itself: step, val_loss, ...


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """The model of a run (best weights), for sampling, evaluation, serving and export."""
    files = read_run(run_dir)
    model = build_model(files.model_config)
    tensors, info = _load_tensors(files.path / BEST)
    if info.get("vocab_sha256") != vocab_digest(files.vocab):
        raise CharnnError(f"{files.path / BEST} was trained with another vocabulary than {VOCAB}")
    _load_into(model, tensors, files.path / BEST)
    return LoadedRun(files, model.to(device).eval(), info)


def onnx_path(run_dir: str | Path, quantize: str = "none") -> Path:
    """Where `charnn export` puts the one-step ONNX model (and sampling caches it)."""
    return Path(run_dir) / ("step.onnx" if quantize == "none" else f"step-{quantize}.onnx")


# --- the resume point -------------------------------------------------------------------------
@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    optimizer: dict  # a torch optimizer state_dict
    extra: dict[str, torch.Tensor]  # RNG states, the carried hidden state, ...
    trainer: dict  # JSON counters: step, best val loss, batch iterator position, ...


def _split_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict as flat tensors plus JSON (param groups, non-tensor values)."""
    tensors, plain = {}, {}
    for pid, per_param in state_dict["state"].items():
        plain[str(pid)] = {}
        for k, v in per_param.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                plain[str(pid)][k] = v
    return tensors, {"state": plain, "param_groups": state_dict["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state: dict[int, dict] = {int(pid): dict(values) for pid, values in plain["state"].items()}
    for key, t in tensors.items():
        _, pid, k = key.split(".", 2)
        state.setdefault(int(pid), {})[k] = t
    return {"state": state, "param_groups": plain["param_groups"]}


def save_checkpoint(
    run_dir: str | Path,
    model: CharLM,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, torch.Tensor],
    trainer: dict,
) -> None:
    """Write last.safetensors: everything a resumed run needs, as one atomic file."""
    optim_tensors, optim_plain = _split_optimizer(optimizer.state_dict())
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(optim_tensors)
    tensors.update({f"extra.{k}": v for k, v in extra.items()})
    _save_tensors(Path(run_dir) / LAST, tensors, {"trainer": trainer, "optimizer": optim_plain})


def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / LAST).is_file()


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    tensors, meta = _load_tensors(Path(run_dir) / LAST)
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optim": {}, "extra": {}}
    for key, t in tensors.items():
        prefix, rest = key.split(".", 1)
        groups[prefix][rest if prefix != "optim" else key] = t
    return Checkpoint(
        model=groups["model"],
        optimizer=_join_optimizer(groups["optim"], meta["optimizer"]),
        extra=groups["extra"],
        trainer=meta["trainer"],
    )


def restore_model(model: CharLM, checkpoint: Checkpoint, run_dir: str | Path) -> None:
    _load_into(model, checkpoint.model, Path(run_dir) / LAST)


# --- metrics ----------------------------------------------------------------------------------
def append_metrics(run_dir: str | Path, record: dict) -> None:
    append_jsonl(Path(run_dir) / METRICS, record)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The metrics records; a torn last line (a kill mid-append) is skipped."""
    return read_jsonl(Path(run_dir) / METRICS)


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop the records after `step` (written by a run that died after its last checkpoint)."""
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    atomic_write(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in kept).encode())


def plot_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / PLOT
