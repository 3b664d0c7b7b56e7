"""The resume point, last.safetensors: weights, optimizer state (its tensors, and its settings as
JSON), RNG states and the carried hidden state as tensors, the trainer's counters as JSON;
one atomic file, so a kill leaves the old resume point or the new one. Loading checks that
everything has the shape charnn writes, so that a resume starts from a state that is
really there. Part of the checkpoint package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from charnn.checkpoint.layout import LAST, writing
from charnn.checkpoint.modelcheck import is_int
from charnn.checkpoint.tensorfile import (
    RESUME_POINT,
    check_finite,
    load_into,
    read_tensors,
    save_tensors,
)
from charnn.errors import CharnnError
from charnn.files import path_kind, shown
from charnn.models import CharLM


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
    path = Path(run_dir) / LAST
    with writing(path):
        save_tensors(path, tensors, {"kind": RESUME_POINT, "trainer": trainer, "optimizer": optim_plain})


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether the run has a resume point. Anything named last.safetensors counts: a broken
    one is reported by load_checkpoint, never taken for "not there"."""
    return path_kind(Path(run_dir) / LAST, follow=False) is not None


def _resume_problems(tensors: dict[str, torch.Tensor], meta: dict) -> list[str]:
    """What in a resume point's tensors and JSON does not have the shape charnn writes."""
    p = [f"tensor {shown(k)}" for k in tensors if not re.fullmatch(r"model\..+|extra\..+|optim\.\d+\..+", k)]
    trainer, optim = meta.get("trainer"), meta.get("optimizer")
    if not isinstance(trainer, dict) or not is_int(trainer.get("step")) or trainer["step"] < 0:
        p.append(f"trainer = {shown(trainer)}")
    groups = optim.get("param_groups") if isinstance(optim, dict) else None
    state = optim.get("state") if isinstance(optim, dict) else None
    if not (isinstance(groups, list) and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                             and all(is_int(i) and i >= 0 for i in g["params"]) for g in groups)):
        return [*p, f"optimizer.param_groups = {shown(groups)}"]
    if not (isinstance(state, dict) and all(re.fullmatch(r"\d+", k) and isinstance(v, dict) for k, v in state.items())):
        return [*p, f"optimizer.state = {shown(state)}"]
    ids = [i for g in groups for i in g["params"]]
    used = {int(k) for k in state} | {int(k.split(".")[1]) for k in tensors if k.startswith("optim.")}
    if len(set(ids)) != len(ids) or not used <= set(ids):
        p.append("optimizer state for parameters outside its groups")
    return p


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    path = Path(run_dir) / LAST
    tensors, meta = read_tensors(path, RESUME_POINT)
    problems = _resume_problems(tensors, meta)
    if problems:
        raise CharnnError(f"{path} is not a resume point as charnn writes it ({'; '.join(problems)}); "
                          f"restore it")
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optim": {}, "extra": {}}
    for key, t in tensors.items():
        prefix, rest = key.split(".", 1)
        groups[prefix][rest if prefix != "optim" else key] = t
    check_finite(path, groups["model"])
    return Checkpoint(
        model=groups["model"],
        optimizer=_join_optimizer(groups["optim"], meta["optimizer"]),
        extra=groups["extra"],
        trainer=meta["trainer"],
    )


def restore_model(model: CharLM, checkpoint: Checkpoint, run_dir: str | Path) -> None:
    path = Path(run_dir) / LAST
    load_into(model, checkpoint.model, path)
    n = len(list(model.parameters()))
    ids = sorted(i for g in checkpoint.optimizer["param_groups"] for i in g["params"])
    if ids != list(range(n)):
        raise CharnnError(f"{path} has optimizer state for {len(ids)} parameters, the model has {n}; restore it")
