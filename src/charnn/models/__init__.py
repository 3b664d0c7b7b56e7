"""Model configuration and the registry of recurrent cores.

Architectures are chosen from the plain dict `CORES`: name -> constructor
`(input_size, hidden, layers, dropout) -> core`. Every core obeys the contract of
`lm.py`: batch-first input (B, T, D), `forward(x, state=None) -> (y, state)`,
`initial_state(batch_size, device)`. The minGRU / minLSTM cores also take the stacking
options of ModelConfig (block, expand, mlp, conv); the others take none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from charnn.errors import CharnnError
from charnn.models import fused, minrnn, scratch
from charnn.models.lm import CharLM

CORES = {
    "rnn": fused.rnn,
    "lstm": fused.lstm,
    "gru": fused.gru,
    # The same cells written out in plain tensor operations (slower; parity-tested).
    "rnn-scratch": scratch.rnn,
    "lstm-scratch": scratch.lstm,
    "gru-scratch": scratch.gru,
    # Feng et al. 2024: gates from the input only, trained by a scan, sampled in O(1) per step.
    "mingru": minrnn.mingru,
    "minlstm": minrnn.minlstm,
}
MIN_CORES = ("mingru", "minlstm")  # the cores that take the stacking options below
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
    # Stacking of the minGRU / minLSTM layers (models/minrnn.py): "plain" feeds each layer's
    # states to the next; "residual" is the paper's language model (pre-norm residual blocks,
    # an MLP of mlp x hidden units, a state of expand x hidden, a causal conv of `conv` taps).
    # "auto" is resolved on creation: residual for mingru / minlstm, plain for the others.
    block: str = "auto"
    expand: float = 1.0
    mlp: float = 2.0
    conv: int = 4  # 0 = no convolution

    def __post_init__(self) -> None:
        if self.block == "auto":
            self.block = "residual" if self.model in MIN_CORES else "plain"

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
        p += self._block_problems()
        return p

    def _block_problems(self) -> list[str]:
        p = []
        if self.block not in minrnn.BLOCKS:
            p.append(f"--block must be one of {', '.join(minrnn.BLOCKS)}, got {self.block!r}")
        elif self.block == "residual" and self.model in CORES and self.model not in MIN_CORES:
            p.append(f"--block residual needs --model {' or '.join(MIN_CORES)}, got --model {self.model}")
        if not (isinstance(self.expand, (int, float)) and 0 < self.expand <= 64):
            p.append(f"--expand must be in (0, 64], got {self.expand}")
        if not (isinstance(self.mlp, (int, float)) and 0 <= self.mlp <= 64):
            p.append(f"--mlp must be in [0, 64] (0 = no MLP), got {self.mlp}")
        if not isinstance(self.conv, int) or self.conv < 0 or self.conv == 1:
            p.append(f"--conv must be 0 (off) or a kernel size >= 2, got {self.conv}")
        if self.block != "residual":
            defaults = {f.name: f.default for f in fields(self)}
            changed = [n for n in ("expand", "mlp", "conv") if getattr(self, n) != defaults[n]]
            if changed:
                verb = "applies" if len(changed) == 1 else "apply"
                p.append(f"{', '.join('--' + n for n in changed)} only {verb} to --model mingru or minlstm "
                         f"with --block residual (got --model {self.model}, --block {self.block}); drop "
                         f"{'it' if len(changed) == 1 else 'them'}")
        return p

    def block_options(self) -> dict:
        """The stacking options for a minGRU / minLSTM core."""
        return {"block": self.block, "expand": self.expand, "mlp": self.mlp, "conv": self.conv}

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
    options = config.block_options() if config.model in MIN_CORES else {}
    core = CORES[config.model](input_size, config.hidden, config.layers, config.dropout, **options)
    return CharLM(config, core)


__all__ = ["CORES", "CharLM", "ModelConfig", "build_model"]
