"""Sampling: the settings of a draw, a pure next-token function, and generate() that streams ids.

Sampling knows only ids; text is encoded and decoded at the edges (the CLI, the server,
the Python API). `generate` primes the state on the prompt in one pass, then steps one
character at a time carrying the state: each step is O(1) in the length of the context.
`SampleConfig` is the one place the sampling settings are declared: their defaults, help,
choices and bounds (charnn.settings). May import errors, settings and data.vocab.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from charnn.data.vocab import UNKNOWN_POLICIES
from charnn.settings import field_problems, setting


@dataclass
class SampleConfig:
    """How text is drawn: the settings of `charnn sample`, `CharModel.generate` and a request.

    The field order is CharModel.generate's positional order after the prime.
    """

    length: int = setting(500, "characters to generate per sample", ge=0)
    temperature: float = setting(1.0, "softmax temperature", note="0 = greedy", ge=0)
    top_k: int = setting(0, "sample only from the K most likely characters", note="0 = off", ge=0)
    top_p: float = setting(1.0, "sample from the smallest set of characters with probability >= P",
                           note="1 = off", gt=0, le=1)
    # The API's default is a fixed seed (the same call gives the same text); `charnn sample`
    # draws a random one instead (SampleCommand).
    seed: int | None = setting(0, "the same seed gives the same text", note="none = a random seed", flag=False)
    stop: list[str] = setting([], "stop a sample before this string", repeat=True, metavar="STRING")
    unknown: str = setting("error", "prime characters outside the vocabulary: error, skip or replace with <unk>",
                           choices=UNKNOWN_POLICIES)

    def problems(self) -> list[str]:
        # In the order charnn has always reported them: the distribution, then the length.
        return (field_problems(self, ["temperature", "top_k", "top_p"]) + field_problems(self, ["length"])
                + field_problems(self, ["unknown"]))


def sample_next(
    logits: torch.Tensor,
    temperature: float = SampleConfig.temperature,
    top_k: int = SampleConfig.top_k,
    top_p: float = SampleConfig.top_p,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next ids (B,) from logits (B, V). temperature 0 = argmax; top_k 0 and top_p 1 = off.

    The same draw as `torch.multinomial(probs, 1, generator=generator)` (see sample_rows),
    and the same code as the server's batched sampler, so a seed means the same text
    everywhere.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    B, V = logits.shape
    device = logits.device
    noise = torch.empty(B, V, device=device).exponential_(generator=generator)  # (B, V)
    return sample_rows(
        logits,
        torch.full((B,), float(temperature), device=device),
        torch.full((B,), int(top_k), dtype=torch.long, device=device),
        torch.full((B,), float(top_p), device=device),
        noise,
    )


def sample_rows(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Next ids (B,) for B independent streams, each with its own settings and random stream.

    logits (B, V); temperature, top_p float32 (B,); top_k int64 (B,); noise (B, V) float32.
    This is the one sampler: sample_next calls it for a batch with shared settings, the
    server for requests with different settings and seeds sharing one step. The draw is torch.multinomial's own for one sample: argmax of
    p / q with q ~ Exp(1) (aten/src/ATen/native/Distributions.cpp), so if row i of `noise`
    is `torch.empty(1, V).exponential_(generator=g)`, row i of the result is exactly
    `sample_next(logits[i:i+1], temperature[i], top_k[i], top_p[i], g)` (and consumes g the
    same way), whatever the other rows hold. Greedy rows (temperature 0) ignore their noise.
    Top-k keeps the k largest logits; top-p then keeps the smallest set of most likely
    tokens whose probability reaches p (never dropping the most likely one).
    """
    B, V = logits.shape
    greedy = temperature == 0  # (B,)
    x = logits.float() / torch.where(greedy, 1.0, temperature)[:, None]  # (B, V)
    use_k = (top_k > 0) & (top_k < V)
    if bool(use_k.any()):
        k_max = int(top_k[use_k].max())
        top = torch.topk(x, k_max, dim=-1).values  # (B, k_max)
        kth = top.gather(1, (top_k.clamp(1, k_max) - 1)[:, None])  # (B, 1)
        x = x.masked_fill(use_k[:, None] & (x < kth), float("-inf"))
    use_p = top_p < 1.0
    if bool(use_p.any()):
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs
        drop = use_p[:, None] & (before >= top_p[:, None])
        x = x.scatter(-1, order, sorted_x.masked_fill(drop, float("-inf")))
    probs = torch.softmax(x, dim=-1)  # (B, V)
    return torch.where(greedy, logits.argmax(dim=-1), (probs / noise).argmax(dim=-1))


@torch.inference_mode()
def generate(
    model,
    prime: Sequence[Sequence[int]] | torch.Tensor,
    length: int,
    temperature: float = SampleConfig.temperature,
    top_k: int = SampleConfig.top_k,
    top_p: float = SampleConfig.top_p,
    seed: int | None = SampleConfig.seed,
    banned: Sequence[int] = (),
) -> Iterator[torch.Tensor]:
    """Yield `length` steps of next ids (B,) for B primes of equal length.

    `model` is a CharLM or an inference.Stepper: called on the prime (B, P) for the state,
    then `.step(ids (B,), state)` once per character. The settings are a SampleConfig's,
    already checked (`SampleConfig.problems`) by the caller.

    `banned` ids (special tokens such as <unk>) are never sampled. The same seed gives the
    same ids.
    """
    device = getattr(model, "device", None) or next(model.parameters()).device
    ids = torch.as_tensor(prime, dtype=torch.long, device=device)
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError("prime must be (B, P) with P >= 1")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    banned_ids = torch.as_tensor(list(banned), dtype=torch.long, device=device)

    logits, state = model(ids)  # prime the state in one pass: (B, P, V)
    last = logits[:, -1]
    for _ in range(length):
        if len(banned_ids):
            last = last.index_fill(-1, banned_ids, float("-inf"))
        nxt = sample_next(last, temperature, top_k, top_p, generator)  # (B,)
        yield nxt
        last, state = model.step(nxt, state)  # (B, V)


class StopFilter:
    """Cut a text stream before the first occurrence of a stop string.

    `feed` returns the part of the text that is safe to show now: a tail that could be
    the start of a stop string is held back until the next piece shows it is not.
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.buffer += piece
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buffer, self.stopped = self.buffer[:cut], "", True
            return out
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buffer)), 0, -1):
                if self.buffer.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(out) :]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out
