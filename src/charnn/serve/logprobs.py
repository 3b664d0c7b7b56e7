"""Log-probabilities in OpenAI's legacy completions shape: computed in the engine, shaped here.

    "logprobs": {"tokens": ["R", "O", ...], "token_logprobs": [null, -1.93, ...],
                 "top_logprobs": [null, {"O": -1.93, "o": -2.2, ...}, ...], "text_offset": [0, 1, ...]}

What the numbers are (README, "Log-probabilities"):
- the model's own distribution: log_softmax of its raw logits over the whole vocabulary,
  before temperature, top-k / top-p and the ban on special tokens. How a character was drawn
  is a setting of the request; what the model believed is not, so the same text scores the
  same whatever the sampling settings, and a prompt scored with echo gets the numbers of
  `charnn score` (the default of vLLM, logprobs_mode raw_logprobs, is the same choice);
- a token is a character; top_logprobs[i] holds the `logprobs` most likely characters
  (special tokens such as <unk> are never offered) and the chosen one when it is not among
  them, so up to logprobs + 1 entries, as OpenAI documents;
- with echo, the prompt's first character has token_logprob and top_logprobs null: it is
  read, not scored (charnn eval's stateful protocol; OpenAI does the same). An empty prompt
  is read as "\\n" (as charnn sample starts), which is not echoed and has no token;
- text_offset counts code points (Python's string index) from the start of the prompt, echoed
  or not, as OpenAI's legacy API counts it: a character generated after the 5-character prompt
  "ROMEO" has offset 5. A JavaScript client indexes Array.from(text), not text.

Imports torch, charnn.data.vocab and charnn.infer.score (top_characters).
"""

from __future__ import annotations

import collections

import torch

from charnn.data.vocab import Vocab
from charnn.infer.score import top_characters

MAX_LOGPROBS = 5  # OpenAI's legacy limit
FLOOR = -9999.0  # what a log-probability of -inf (or NaN) is sent as: JSON has no infinity

# (id, its log-probability or None when not scored, [(id, log-probability), ...] the most
# likely characters or None)
TokenScore = tuple[int, float | None, list[tuple[int, float]] | None]


def row_scores(logits: torch.Tensor, ids: torch.Tensor, k: int, n_chars: int) -> list[TokenScore]:
    """Each row of logits (R, V) scored for the id (R,) that followed it, with its k most likely characters."""
    lp = torch.log_softmax(logits.float(), dim=-1)  # (R, V): the raw distribution
    chosen = lp.gather(1, ids[:, None].to(lp.device))[:, 0]  # (R,)
    top_lp, top_ids = top_characters(lp, k, n_chars)
    return [(i, c, list(zip(t, v))) for i, c, t, v in
            zip(ids.tolist(), chosen.tolist(), top_ids.tolist(), top_lp.tolist())]


def step_scores(logits: torch.Tensor, ids: torch.Tensor, wanted: dict[int, int], n_chars: int):
    """(row, score) for each row b of a step's batch in `wanted` (row -> its number of alternatives):
    logits (B, V) scored for the ids (B,) sampled from them."""
    if not wanted:
        return []
    rows = list(wanted)
    idx = torch.tensor(rows, device=logits.device)
    scores = row_scores(logits[idx], ids[idx], max(wanted.values()), n_chars)
    return [(b, (i, lp, top[: wanted[b]])) for b, (i, lp, top) in zip(rows, scores)]


def prompt_scores(logits: torch.Tensor, prompt: list[int], k: int, n_chars: int) -> list[TokenScore]:
    """The prompt's characters scored from the logits (P, V) of reading it: the first is not."""
    first: TokenScore = (prompt[0], None, None)
    if len(prompt) == 1:
        return [first]
    after = torch.tensor(prompt[1:], dtype=torch.long, device=logits.device)
    return [first, *row_scores(logits[:-1], after, k, n_chars)]


def release(pending: collections.deque, n: int, texts: list[str]) -> list[TokenScore]:
    """The scores of the next `n` characters of text shown, taken from the front of `pending`.

    A stream's text is held back while it could be the start of a stop string; its scores
    wait with it, and those of text cut by a stop string are never shown.
    """
    out = []
    while pending and (n > 0 or not texts[pending[0][0]]):  # a special token has no text
        score = pending.popleft()
        n -= len(texts[score[0]])
        out.append(score)
    return out


def prompt_tokens(vocab: Vocab, prompt: str, unknown: str) -> tuple[list[str], list[int]]:
    """The prompt's characters that the model reads, and their offsets in the prompt: all of
    them, or (unknown "skip") those in the vocabulary; none for an empty prompt."""
    bad = set(vocab.unknown_chars(prompt)) if unknown == "skip" else set()
    kept = [(i, c) for i, c in enumerate(prompt) if c not in bad]
    return [c for _, c in kept], [i for i, _ in kept]


def _finite(x: float) -> float:
    return x if x > FLOOR else FLOOR  # -inf and NaN too


class ChoiceLogprobs:
    """One choice's logprobs object, built piece by piece as its outputs arrive."""

    def __init__(self, texts: list[str], prompt: str, tokens: list[str], offsets: list[int]) -> None:
        self.texts = texts
        self.prompt_tokens, self.prompt_offsets = tokens, offsets
        self.end = len(prompt)  # the next generated character's offset: after the prompt
        self.all = empty()

    def add(self, scores: list[TokenScore], prompt: bool = False) -> dict:
        """The piece of the logprobs object for these scores (also kept in `all`)."""
        piece = empty()
        if prompt:
            if len(self.prompt_tokens) != len(scores):  # an empty prompt: read as "\n", not echoed
                return piece
            tokens, offsets = self.prompt_tokens, self.prompt_offsets
        else:
            tokens, offsets = [self.texts[i] for i, _, _ in scores], []
            for t in tokens:
                offsets.append(self.end)
                self.end += len(t)
        for token, offset, (_, lp, top) in zip(tokens, offsets, scores):
            piece["tokens"].append(token)
            piece["text_offset"].append(offset)
            piece["token_logprobs"].append(None if lp is None else _finite(lp))
            if top is None:
                piece["top_logprobs"].append(None)
                continue
            alternatives = {self.texts[i]: _finite(v) for i, v in top}
            if token not in alternatives:
                alternatives[token] = _finite(lp)
            piece["top_logprobs"].append(alternatives)
        extend(self.all, piece)
        return piece


def empty() -> dict:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def extend(into: dict, piece: dict) -> None:
    for key, values in piece.items():
        into[key].extend(values)
