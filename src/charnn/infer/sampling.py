"""Sampling: the settings of a draw, a pure next-token function, and generate() that streams ids.

Sampling knows only ids; text is encoded and decoded at the edges (the CLI, the server,
the Python API). `generate` primes the state on the prompt in one pass, then steps one
character at a time carrying the state: each step is O(1) in the length of the context.
`sample_rows` is the one sampler, right for every setting within SampleConfig's bounds:
float32 arithmetic where it holds, float64 for the rows at its edges. `SampleConfig` is the one place the sampling settings are declared: their defaults, help,
choices and bounds (charnn.settings). `generate_documents` draws N whole documents (a
`--documents` run) side by side, each stopping at `<end>`. May import errors, settings,
data.vocab and models.lm.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from charnn.data.vocab import UNKNOWN_POLICIES
from charnn.models.lm import select_state
from charnn.settings import field_problems, setting


@dataclass
class SampleConfig:
    """How text is drawn: the settings of `charnn sample`, `CharModel.generate` and a request.

    The field order is CharModel.generate's positional order after the prime.
    """

    length: int = setting(500, "characters to generate per sample (a documents run: the most a document may have)",
                          ge=0)
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


def seed_or_random(seed: int | None) -> int:
    """`seed`, or without one a fresh random seed (31 bits), which the caller reports."""
    return seed if seed is not None else int.from_bytes(os.urandom(4), "little") >> 1


def sample_next(
    logits: torch.Tensor,
    temperature: float = SampleConfig.temperature,
    top_k: int = SampleConfig.top_k,
    top_p: float = SampleConfig.top_p,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next ids (B,) from logits (B, V). temperature 0 = argmax; top_k 0 and top_p 1 = off.

    The same draw as `torch.multinomial(probs, 1, generator=generator)` (see sample_rows),
    and the same code as the server's batched sampler, so a seed means the same text
    everywhere. Every setting within SampleConfig's bounds is drawn: a temperature beyond
    float32's range becomes inf (the uniform limit), a positive one below it float32's
    smallest (the argmax limit: only 0 is greedy), a top_k beyond the vocabulary its size (off).
    `noise` (B, V), when given, is the draw's Exp(1) noise, drawn already from `generator`
    (as _generate_chunks draws it, many rows at once).
    """
    if temperature == 0:
        return _argmax(logits)
    B, V = logits.shape
    device = logits.device
    if noise is None:
        noise = torch.empty(B, V, device=device).exponential_(generator=generator)  # (B, V)
    t = torch.full((B,), _float32(temperature), device=device)
    if (top_k == 0 or top_k >= V) and _float32(top_p) >= 1.0 and logits.dtype == torch.float32:
        # Nothing cut: sample_rows's own arithmetic, without the ~15 ops of the cuts it would
        # skip (a one-stream step is ~30 ops; this is a third of them). The same ids, the
        # same noise; a row float32 cannot carry goes to sample_rows as it would have.
        scores = torch.softmax(logits / t[:, None], dim=-1) / noise  # (B, V)
        if not math.isnan(float(scores.sum())):
            return scores.argmax(dim=-1)
    return sample_rows(
        logits, t, torch.full((B,), min(int(top_k), V), dtype=torch.long, device=device),
        torch.full((B,), _float32(top_p), device=device), noise,
    )


def _float32(v: float) -> float:
    """The float32 nearest v, as a Python float: inf beyond float32's range, and float32's
    smallest positive value for a positive v that would round to 0."""
    try:
        f = struct.unpack("f", struct.pack("f", v))[0]
    except OverflowError:
        return math.copysign(math.inf, v)
    return f if f != 0 or v <= 0 else 2.0**-149


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    """Greedy ids (B,): the first most likely token; NaN is no candidate."""
    return logits.nan_to_num(float("-inf"), float("inf"), float("-inf")).argmax(dim=-1)


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
    server for requests with different settings and seeds sharing one step. The draw is
    torch.multinomial's own for one sample: argmax of p / q with q ~ Exp(1)
    (aten/src/ATen/native/Distributions.cpp), so if row i of `noise` is
    `torch.empty(1, V).exponential_(generator=g)`, row i of the result is exactly
    `sample_next(logits[i:i+1], temperature[i], top_k[i], top_p[i], g)` (and consumes g the
    same way), whatever the other rows hold. Greedy rows (temperature 0) ignore their noise.
    Top-k keeps the k largest logits (and those tied with the k-th); top-p then keeps the
    smallest set of most likely tokens whose probability reaches p, never dropping the most
    likely one.

    A token whose logit is -inf (banned) or NaN is never drawn, at any temperature in
    [0, inf] and top_p in [0, 1]. The arithmetic is float32 as it has always been (same seed,
    same text); a row it cannot carry (logits / t overflows to inf or NaN, a NaN logit, no
    token left, or a 0 / 0 draw) is drawn again by `_redraw`, exactly, with the same noise.
    """
    greedy = temperature == 0  # (B,)
    # Top-k and top-p rank the logits, not logits / t: distinct logits stay distinct however
    # large t is (top_k 1 is greedy), and ties fall where ranking logits / t put them.
    rank = _top_k(logits.float(), top_k)  # (B, V), -inf where top-k cut
    x = rank / torch.where(greedy, 1.0, temperature)[:, None]  # (B, V)
    scores = _top_p_scores(rank, x, top_p, noise)  # (B, V): probability / noise
    nxt = torch.where(greedy, rank.argmax(dim=-1), scores.argmax(dim=-1))
    if math.isnan(float(scores.sum())):  # never for finite logits / t and a non-zero noise
        rows = scores.isnan().any(dim=-1).nonzero().squeeze(1)
        redrawn = _redraw(logits[rows], temperature[rows], top_k[rows], top_p[rows], noise[rows])
        nxt[rows] = redrawn.to(nxt.device)
    return nxt


def _top_k(rank: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """`rank` (B, V) with -inf below each row's k-th largest (top_k 0 or >= V: off)."""
    use_k = (top_k > 0) & (top_k < rank.shape[1])
    if not bool(use_k.any()):
        return rank
    k_max = int(top_k[use_k].max())
    top = torch.topk(rank, k_max, dim=-1).values  # (B, k_max)
    kth = top.gather(1, (top_k.clamp(1, k_max) - 1)[:, None])  # (B, 1)
    return rank.masked_fill(use_k[:, None] & (rank < kth), float("-inf"))


def _top_p_scores(rank: torch.Tensor, x: torch.Tensor, top_p: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """softmax(x) / noise (B, V) after top-p; x is monotone in `rank`, -inf where it is."""
    use_p = top_p < 1.0
    if bool(use_p.any()):
        order = torch.sort(rank, dim=-1, descending=True).indices
        sorted_x = x.gather(1, order)
        probs = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs
        drop = use_p[:, None] & (before >= top_p[:, None])
        drop[:, 0] = False  # a top_p that rounds to 0 still keeps the most likely
        x = x.scatter(-1, order, sorted_x.masked_fill(drop, float("-inf")))
    return torch.softmax(x, dim=-1) / noise


def _redraw(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
            noise: torch.Tensor) -> torch.Tensor:
    """sample_rows for the rows float32 could not carry: in float64, on the CPU (which has it).

    softmax(l / t) = softmax((l - max) / t), and that cannot overflow: the most likely logits
    get 0, the rest (l - max) / t in [-inf, 0]. So t = inf is the uniform limit over the
    allowed tokens, a tiny t the argmax limit (ties shared). NaN counts as -inf; a +inf logit
    outweighs every finite one; a row with no allowed token at all has nothing right to draw
    and is uniform. A token of probability 0 is never drawn, whatever its noise.
    """
    inf = float("inf")
    rank = logits.detach().cpu().double()
    rank = _top_k(rank.masked_fill(rank.isnan(), -inf), top_k.detach().cpu())  # (B, V)
    t = temperature.detach().cpu().double()[:, None]  # (B, 1)
    best = rank.amax(dim=-1, keepdim=True)  # (B, 1), never cut by top-k
    z = torch.where((rank == -inf) | (best == inf), -inf, (rank - best) / t)
    z = z.masked_fill(rank == best, 0.0)  # (B, V), max 0
    scores = _top_p_scores(rank, z, top_p.detach().cpu(), noise.detach().cpu().double())
    drawn = scores.nan_to_num(0.0).argmax(dim=-1)  # 0 / 0: a probability 0 against a noise of 0
    return torch.where(t[:, 0] == 0, rank.argmax(dim=-1), drawn)


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
    same ids. A stepper with `sample_steps` (the native kernel) draws one stream with nothing
    cut CHUNK characters per call: the same noise, the same draw (_generate_chunks).
    """
    device = getattr(model, "device", None) or next(model.parameters()).device
    ids = torch.as_tensor(prime, dtype=torch.long, device=device)
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError("prime must be (B, P) with P >= 1")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    banned_ids = torch.as_tensor(list(banned), dtype=torch.long, device=device)

    with torch.inference_mode():
        logits, state = model(ids)  # prime the state in one pass: (B, P, V)
    last = logits[:, -1]
    chunked = getattr(model, "sample_steps", None)  # a stepper that draws and steps in one call
    V = last.shape[-1]
    if (chunked is not None and ids.shape[0] == 1 and temperature != 0 and (top_k == 0 or top_k >= V)
            and _float32(top_p) >= 1.0 and last.dtype == torch.float32):
        yield from _generate_chunks(model, chunked, last, state, length, temperature, top_k, top_p,
                                    banned_ids, generator)
    else:
        yield from _generate_steps(model, last, state, length, temperature, top_k, top_p, banned_ids, generator)


@torch.inference_mode()  # every step of the generator runs in inference mode, whatever the caller's
def _generate_steps(model, last, state, length, temperature, top_k, top_p, banned_ids, generator):
    """generate's loop, one character per step: draw from the last logits, feed the id back."""
    for _ in range(length):
        if len(banned_ids):
            last = last.index_fill(-1, banned_ids, float("-inf"))
        nxt = sample_next(last, temperature, top_k, top_p, generator)  # (B,)
        yield nxt
        last, state = model.step(nxt, state)  # (B, V)


CHUNK = 32  # characters per call of a stepper's sample_steps; the text still streams


def _generate_chunks(model, chunked, last, state, length, temperature, top_k, top_p, banned_ids, generator):
    """generate's loop for one stream with nothing cut, CHUNK characters per call of the
    stepper's `sample_steps` (the native kernel, infer.native): the same noise (torch draws
    exponential_ element after element, so K rows at once are the K rows one at a time) and
    the same draw as sample_next's uncut path; a row float32 cannot carry goes to sample_next
    itself, with its own noise row. Inference mode is entered once per chunk,
    not once per character (what a decorated generator would cost)."""
    V = last.shape[-1]
    banned = torch.zeros(V, dtype=torch.uint8)
    banned[banned_ids.cpu()] = 1
    t = _float32(temperature)
    left = length
    while left:
        with torch.inference_mode():
            noise = torch.empty(min(CHUNK, left), V).exponential_(generator=generator)  # (K, V)
        i = 0
        while i < len(noise):
            with torch.inference_mode():
                got, last, state = chunked(last, state, noise[i:], t, banned)
            if len(got):
                yield from got.split(1)  # (1,) each
            i += len(got)
            if i < len(noise):
                with torch.inference_mode():  # the row the kernel left to sample_next, with its noise
                    row = last.index_fill(-1, banned_ids, float("-inf")) if len(banned_ids) else last
                    nxt = sample_next(row, temperature, top_k, top_p, noise=noise[i : i + 1])
                yield nxt
                with torch.inference_mode():
                    last, state = model.step(nxt, state)
                i += 1
        left -= len(noise)


@torch.inference_mode()
def generate_documents(
    model,
    prime: Sequence[int],
    n: int,
    length: int,
    temperature: float = SampleConfig.temperature,
    top_k: int = SampleConfig.top_k,
    top_p: float = SampleConfig.top_p,
    seed: int = 0,
    banned: Sequence[int] = (),
    end: int = -1,
) -> Iterator[tuple[int, list[int], bool]]:
    """n documents that continue `prime` (ids, `<start>` first), drawn side by side in one batch.

    Yields (i, ids, ended) as document i finishes: ended when it drew `end` (left out of ids)
    within `length` + 1 draws (a document of exactly `length` characters ends too), not ended
    when it was cut at `length` characters. Document i draws with its own generator,
    seeded seed + i, exactly as generate() draws its one row with that seed (sample_rows), so
    it is the text `generate` gives alone, up to the rounding of a batched step (serve/engine.py
    says when that can change a character). A finished document leaves the batch.
    """
    device = getattr(model, "device", None) or next(model.parameters()).device
    logits, state = model(torch.as_tensor([list(prime)], dtype=torch.long, device=device))  # (1, P, V)
    fan = torch.zeros(n, dtype=torch.long, device=device)
    last, state = logits[:, -1].index_select(0, fan), select_state(state, fan)  # (n, V), n rows
    V = last.shape[-1]
    generators = []
    for i in range(n):
        generators.append(torch.Generator(device=device))
        generators[-1].manual_seed(seed + i)
    banned_ids = torch.as_tensor(list(banned), dtype=torch.long, device=device)
    rows, out = list(range(n)), [[] for _ in range(n)]
    for drawn in range(length + 1):
        if len(banned_ids):
            last = last.index_fill(-1, banned_ids, float("-inf"))
        if temperature == 0:
            nxt = _argmax(last)
        else:  # each row's noise from its own generator, as sample_next draws it for one row
            noise = torch.cat([torch.empty(1, V, device=device).exponential_(generator=generators[i]) for i in rows])
            B = len(rows)
            nxt = sample_rows(last, torch.full((B,), _float32(temperature), device=device),
                              torch.full((B,), min(int(top_k), V), dtype=torch.long, device=device),
                              torch.full((B,), _float32(top_p), device=device), noise)
        keep = []
        for b, (i, token) in enumerate(zip(rows, nxt.tolist())):
            if token == end:
                yield i, out[i], True
            elif drawn == length:  # the cap: only <end> was still allowed
                yield i, out[i], False
            else:
                out[i].append(token)
                keep.append(b)
        if len(keep) < len(rows):
            if not keep:
                return
            idx = torch.tensor(keep, dtype=torch.long, device=device)
            rows, nxt, state = [rows[b] for b in keep], nxt.index_select(0, idx), select_state(state, idx)
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
