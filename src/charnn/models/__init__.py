"""Model configuration and the registry of recurrent cores.

Architectures are chosen from the plain dict `CORES`: name -> constructor
`(input_size, hidden, layers, dropout) -> core`. Every core obeys the contract of
`lm.py`: batch-first input (B, T, D), `forward(x, state=None) -> (y, state)`,
`initial_state(batch_size, device)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from charnn.errors import CharnnError
from charnn.models import fused, scratch
from charnn.models.lm import CharLM

CORES = {
    "rnn": fused.rnn,
    "lstm": fused.lstm,
    "gru": fused.gru,
    # The same cells written out in plain tensor operations (slower; parity-tested).
    "rnn-scratch": scratch.rnn,
    "lstm-scratch": scratch.lstm,
    "gru-scratch": scratch.gru,
}
INPUTS = ("embedding", "onehot")


@dataclass
class ModelConfig:
    model: str = "lstm"  # a name in CORES
    vocab_size: int = 0  # set from the vocabulary
    embed: int = 64  # embedding size (unused with input="onehot")
    hidden: int = 384
    layers: int = 2
    dropout: float = 0.0
    input: str = "embedding"  # "embedding" or "onehot"

    def problems(self) -> list[str]:
        """Every invalid setting, as messages that name the flag."""
        p = []
        if self.model not in CORES:
            p.append(f"--model must be one of {', '.join(CORES)}, got {self.model!r}")
        if self.input not in INPUTS:
            p.append(f"--input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        for name in ("embed", "hidden", "layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                p.append(f"--{name} must be a positive integer, got {v}")
        if not 0.0 <= self.dropout < 1.0:
            p.append(f"--dropout must be in [0, 1), got {self.dropout}")
        return p

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CharnnError(
                f"{source} has model settings this charnn does not know ({', '.join(unknown)}); "
                f"upgrade charnn"
            )
        return cls(**d)


def build_model(config: ModelConfig) -> CharLM:
    problems = config.problems()
    if config.vocab_size < 1:
        problems.append("the vocabulary is empty")
    if problems:
        raise CharnnError("; ".join(problems))
    input_size = config.embed if config.input == "embedding" else config.vocab_size
    core = CORES[config.model](input_size, config.hidden, config.layers, config.dropout)
    return CharLM(config, core)


__all__ = ["CORES", "CharLM", "ModelConfig", "build_model"]
