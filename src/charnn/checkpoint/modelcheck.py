"""The model settings of a run's config.json, checked as JSON values before anything is built.

config.json is plain text that anyone can edit, so each model setting is checked for its
JSON type (from ModelConfig's annotations), its bounds (ModelConfig.problems, with the
messages naming the file's keys instead of command-line flags) and its size: the model's
weights are counted on the meta device, without allocating them, and a model that cannot
fit in this machine's memory is refused at once. Part of the checkpoint package.

After the restructure, `model_params` and `memory_problem` belong with ModelConfig (models/),
where `charnn train --hidden 1000000000` can use them too.
"""

from __future__ import annotations

import functools
import math
import os
import re
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import get_type_hints

import torch

from charnn.errors import CharnnError
from charnn.files import shown, size_text
from charnn.models import ModelConfig, build_model

SIZE_LIMIT = 1 << 24  # no size setting of a model that fits in memory comes near this
_TYPES = {int: "an integer", float: "a number", str: "a string"}


def model_params(config: ModelConfig) -> int:
    """The number of weights of `config`'s model, counted without allocating them.

    Built on the meta device with one and with two layers; every further layer adds what the
    second did, so any depth is counted at once (and remembered: a command reads a run twice).
    """
    one = _count(tuple(asdict(replace(config, layers=1)).items()))
    if config.layers == 1:
        return one
    return one + (config.layers - 1) * (_count(tuple(asdict(replace(config, layers=2)).items())) - one)


@functools.lru_cache(maxsize=64)
def _count(settings: tuple) -> int:
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # torch warns about dropout with one layer
        model = build_model(ModelConfig(**dict(settings)))
    return sum(t.numel() for t in model.state_dict().values())


def memory_bytes() -> int | None:
    """This machine's memory (or its container's limit), None where it cannot be told."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdecimal():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def memory_problem(config: ModelConfig, copies: int = 1) -> str | None:
    """Why `copies` float32 copies of the model's weights cannot fit here, or None.
    (Training needs about 4: weights, gradients and AdamW's two moments.)"""
    params, have = model_params(config), memory_bytes()
    need = params * 4 * copies
    if have is None or need <= have:
        return None
    return (f"a {config.model} model of {config.layers} x {config.hidden} has {params:,} weights and needs "
            f"{size_text(need)}, more than this machine's {size_text(have)} of memory")


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def has_type(v, t) -> bool:
    """Whether the JSON value `v` is a `t` (int, float or str); numbers must be finite."""
    if t is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return is_int(v) if t is int else isinstance(v, t)


def model_config(section, source: Path, fix: str) -> ModelConfig:
    """The "model" section of config.json as a ModelConfig, or one CharnnError naming `source`."""
    if not isinstance(section, dict):
        raise CharnnError(f'{source}: "model" must be a JSON object of settings, got {shown(section)}; {fix}')
    hints = get_type_hints(ModelConfig)
    problems = [f"model.{k} must be {_TYPES[hints[k]]}, got {shown(v)}" for k, v in section.items()
                if hints.get(k) in _TYPES and not has_type(v, hints[k])]
    problems += [f"model.{k} is {v:,}, more than any model can have ({SIZE_LIMIT:,})" for k, v in section.items()
                 if hints.get(k) is int and is_int(v) and v > SIZE_LIMIT and k != "layers"]
    if not problems:
        config = ModelConfig.from_dict(dict(section), str(source))  # unknown settings: upgrade charnn
        # Its checks name command-line flags; here the values come from the file.
        problems = [re.sub(r"--([a-z][a-z-]*)", lambda m: "model." + m.group(1).replace("-", "_"), p)
                    for p in config.problems()]
        if config.vocab_size < 1:
            problems.append(f"model.vocab_size must be a positive integer, got {config.vocab_size}")
        if not problems and (problem := memory_problem(config)):
            problems.append(problem)
    if problems:
        raise CharnnError(f"{source} has invalid model settings ({'; '.join(problems)}); {fix}")
    return config
