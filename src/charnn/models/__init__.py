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
from charnn.settings import default_of, field_problems, setting, type_problems

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
# Weight blocks per layer: the gates of the classic cells (torch's and the scratch ones lay
# them out alike), the projections of a minGRU / minLSTM layer ([k, v] or [k_f, k_i, v]).
GATES = {"rnn": 1, "lstm": 4, "gru": 3, "mingru": 2, "minlstm": 3}
# Deeper stacks or wider convolutions than anyone trains take minutes just to build (a
# 10,000-layer torch LSTM: ~30 s) or to run one step; refused up front instead.
MAX_LAYERS = 1024
MAX_CONV = 256


@dataclass
class ModelConfig:
    """The model's settings; the `charnn train` model flags map onto these one to one."""

    model: str = setting("lstm", "recurrent core", choices=tuple(CORES))
    vocab_size: int = setting(0, "tokens in the vocabulary (set from it)", flag=False)
    embed: int = setting(64, "embedding size", positive=True)  # unused with input="onehot"
    hidden: int = setting(384, "hidden units per layer", positive=True)
    layers: int = setting(2, "stacked recurrent layers", positive=True)
    dropout: float = setting(0.0, "dropout between layers and before the head, 0 = off", ge=0, lt=1)
    input: str = setting("embedding", "input encoding", choices=INPUTS)
    # Stacking of the minGRU / minLSTM layers (models/minrnn.py): "plain" feeds each layer's
    # states to the next; "residual" is the paper's language model (pre-norm residual blocks,
    # an MLP of mlp x hidden units, a state of expand x hidden, a causal conv of `conv` taps).
    # "auto" is resolved on creation: residual for mingru / minlstm, plain for the others.
    block: str = setting("auto", "mingru/minlstm stacking: plain, or residual (the paper's language model); "
                         "auto = residual for mingru/minlstm", choices=("auto", *minrnn.BLOCKS))
    expand: float = setting(1.0, "--block residual: recurrent state size as a multiple of --hidden", gt=0, le=64)
    mlp: float = setting(2.0, "--block residual: MLP size as a multiple of --hidden", note="0 = no MLP", ge=0, le=64)
    conv: int = setting(4, "--block residual: causal convolution kernel size", note="0 = off")  # checked below

    def __post_init__(self) -> None:
        if self.block == "auto":
            self.block = "residual" if self.model in MIN_CORES else "plain"

    def problems(self) -> list[str]:
        """Every invalid setting, as messages that name the flag."""
        # --block is checked after "auto" is resolved, against the stackings that exist.
        p = (field_problems(self, [f.name for f in fields(self) if f.name != "block"])
             + type_problems(self, [f.name for f in fields(self) if f.name != "conv"]))  # conv: checked below
        if isinstance(self.layers, int) and self.layers > MAX_LAYERS:
            p.append(f"--layers must be at most {MAX_LAYERS}, got {self.layers}")
        return p + self._block_problems()

    def _block_problems(self) -> list[str]:
        p = []
        if self.block not in minrnn.BLOCKS:
            p.append(f"--block must be one of {', '.join(minrnn.BLOCKS)}, got {self.block!r}")
        elif self.block == "residual" and self.model in tuple(CORES) and self.model not in MIN_CORES:
            p.append(f"--block residual needs --model {' or '.join(MIN_CORES)}, got --model {self.model}")
        if isinstance(self.conv, bool) or not isinstance(self.conv, int) or self.conv < 0 or self.conv == 1:
            p.append(f"--conv must be 0 (off) or a kernel size >= 2, got {self.conv}")
        elif self.conv > MAX_CONV:
            p.append(f"--conv must be at most {MAX_CONV}, got {self.conv}")
        if self.block != "residual":
            changed = [n for n in ("expand", "mlp", "conv") if getattr(self, n) != default_of(ModelConfig, n)]
            if changed:
                verb = "applies" if len(changed) == 1 else "apply"
                p.append(f"{', '.join('--' + n for n in changed)} only {verb} to --model mingru or minlstm "
                         f"with --block residual (got --model {self.model}, --block {self.block}); drop "
                         f"{'it' if len(changed) == 1 else 'them'}")
        return p

    # --- size, from the settings alone (nothing is built) ------------------------------------
    # Valid only for settings without problems(); the vocabulary counts as it is (0 = not
    # known yet, which leaves a lower bound).
    def parameter_count(self) -> int:
        """The number of parameters build_model(self) has (tested against it for every core)."""
        V, H = self.vocab_size, self.hidden
        embedded = self.input == "embedding"
        size = self.embed if embedded else V  # what the core reads per character
        return (V * self.embed if embedded else 0) + self._core_parameters(size) + H * V + V  # + the head

    def _core_parameters(self, size: int) -> int:
        H, L, g = self.hidden, self.layers, GATES[self.model.removesuffix("-scratch")]
        if self.model not in MIN_CORES:  # weights and biases on the input and on the state
            return g * H * (size + H + 2) + (L - 1) * g * H * (2 * H + 2)
        if self.block == "plain":  # one projection with bias per layer
            return g * H * (size + 1) + (L - 1) * g * H * (H + 1)
        S, M, K = max(1, round(H * self.expand)), round(H * self.mlp), self.conv
        block = (H * K + H if K else 0) + 2 * H + g * S * (H + 1) + S * H + H  # conv, norm, cell, out
        block += 2 * H + H * M + M + M * H + H if M else 0  # norm and MLP
        return (size * H if size != H else 0) + L * block + 2 * H  # input map, blocks, final norm

    def _activations_per_char(self) -> int:
        """A lower bound of the values one character of a training batch keeps for backward:
        its input vector, each layer's gate pre-activations and output, and its logits (twice:
        the loss works on a float32 copy)."""
        state = max(1, round(self.hidden * self.expand)) if self.block == "residual" else self.hidden
        gates = GATES[self.model.removesuffix("-scratch")]
        size = self.embed if self.input == "embedding" else self.vocab_size
        return size + self.layers * (gates + 1) * state + 2 * self.vocab_size

    def estimated_bytes(self, *, training: bool = False, batch_size: int = 0, seq_len: int = 0,
                        value_bytes: int = 4) -> int:
        """A lower bound of the memory the model takes: its float32 weights; to train, also their
        gradients and AdamW's two moments, and one batch of batch_size x seq_len characters'
        activations of `value_bytes` each (2 under bfloat16 or float16 autocast)."""
        weights = 4 * self.parameter_count() * (4 if training else 1)
        return weights + batch_size * seq_len * self._activations_per_char() * value_bytes

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
    if isinstance(config.vocab_size, int) and config.vocab_size < 1:  # else a type problem above
        problems.append("the vocabulary is empty")
    if problems:
        raise CharnnError("; ".join(problems))
    input_size = config.embed if config.input == "embedding" else config.vocab_size
    options = config.block_options() if config.model in MIN_CORES else {}
    core = CORES[config.model](input_size, config.hidden, config.layers, config.dropout, **options)
    return CharLM(config, core)


__all__ = ["CORES", "MAX_CONV", "MAX_LAYERS", "CharLM", "ModelConfig", "build_model"]
