"""The model settings of a run's config.json, checked as JSON values before anything is built.

config.json is plain text that anyone can edit, so each model setting is checked for its
JSON type (from ModelConfig's annotations), its bounds (ModelConfig.problems, with the
messages naming the file's keys instead of command-line flags) and its size: the model's
weights are counted from its settings (ModelConfig.parameter_count, nothing allocated), and
a model that cannot fit in this machine's memory (devices.memory_limit) is refused at once.
Part of the checkpoint package.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import get_type_hints

from charnn.devices import format_bytes, memory_limit
from charnn.errors import CharnnError
from charnn.files import shown
from charnn.models import ModelConfig

SIZE_LIMIT = 1 << 24  # no size setting of a model that fits in memory comes near this
_TYPES = {int: "an integer", float: "a number", str: "a string"}


def memory_problem(config: ModelConfig) -> str | None:
    """Why the model's float32 weights cannot fit in this machine's memory, or None."""
    found, need = memory_limit("cpu"), config.estimated_bytes()
    if found is None or need <= found[0]:
        return None
    return (f"a {config.model} model of {config.layers} x {config.hidden} has {config.parameter_count():,} "
            f"weights and needs {format_bytes(need)}, more than {found[1]} ({format_bytes(found[0])})")


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
