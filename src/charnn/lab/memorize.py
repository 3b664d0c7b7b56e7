"""The memorisation experiment: train one model until it can recite one text, and measure it.

The seed notebook asked "how long can an RNN cell remember?": it trained a hand-written RNN
cell on one sentence framed by a start and an end token, then let it recite the sentence
from the start token, feeding each output back in. `memorize(config)` is that experiment,
reproducible and measured:

    sequence:   <start> h e l l o . <end>
    inputs:     <start> h e l l o .          (one-hot vectors, or a learned embedding)
    targets:            h e l l o . <end>    (MSE on the one-hot target, or cross-entropy)

- Each epoch is one update on the whole sequence (full backprop through time), with Adam.
  With `batch_size` B > 1 the batch is B sliding windows, as in the notebook's batch-5 LSTM:
  window k reads inputs k .. k+N-B (N = len(TEXT) + 1 inputs), each from a zero state, so
  together they cover every target.
- Teacher-forced accuracy: the share of targets (the <end> included) predicted correctly
  (argmax) when the model is fed the true previous characters, in the training layout.
- Recall: greedy decoding from <start>, feeding back each prediction as a one-hot input
  (`feedback="onehot"`) or, as the notebook did, the raw output vector (`feedback="raw"`),
  until the model predicts <end> or has produced len(TEXT) characters. Character accuracy
  compares the recall with TEXT position by position (missing characters count as wrong).
- First exact epoch: the first number of updates after which the recall is exactly TEXT.
  With one-hot feedback it is read off a teacher-forced pass (greedy recall is exact iff every
  character of TEXT is predicted right when fed the true prefix), so it costs nothing extra
  with batch 1; with raw feedback the recall itself is run after every update.

Adam is invariant to the scale of the loss (up to its epsilon), so the notebook's sum of
per-character losses and the mean used here give the same updates.

Imports the data and model layers (and the base modules); capacity.py builds on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from charnn.data.vocab import END, START, Vocab
from charnn.errors import CharnnError, check_all
from charnn.models import CORES, INPUTS, ModelConfig, build_model
from charnn.models.lm import CharLM, char_loss
from charnn.settings import field_problems, flag_name, from_settings, setting

LOSSES = ("ce", "mse")
FEEDBACKS = ("onehot", "raw")

# The notebook's alphabet "abcdefghijklmnopqrstuvwxyz ?!.,:;01" used "0" and "1" as its start
# and end tokens; here those are <start> and <end>, so the one-hot vectors have the same 35
# entries.
TUTORIAL_ALPHABET = "abcdefghijklmnopqrstuvwxyz ?!.,:;"
TUTORIAL_SENTENCE = "hello pytorch. how long can a rnn cell remember?"
TUTORIAL_SENTENCE_LONG = TUTORIAL_SENTENCE + " show me your limit!"


@dataclass
class MemorizeConfig:
    """One memorisation run; the `charnn memorize` flags map onto these one to one."""

    text: str = ""  # the TEXT argument (or a preset's)
    alphabet: str = setting("", "the characters of the vocabulary", note='"" = those of TEXT')
    cell: str = setting("lstm", "recurrent core", choices=CORES)
    layers: int = setting(1, "stacked recurrent layers", positive=True)
    hidden: int = setting(64, "hidden units per layer", positive=True)
    embed: int = setting(32, "embedding size (with --input embedding)", positive=True)
    input: str = setting("onehot", "input encoding", choices=INPUTS)
    loss: str = setting("ce", "ce = cross-entropy; mse = squared error to the one-hot target", choices=LOSSES)
    lr: float = setting(0.01, "Adam learning rate", gt=0)
    epochs: int = setting(500, "updates, each on the whole text", positive=True)
    batch_size: int = setting(1, "sliding windows per batch", positive=True)
    feedback: str = setting("onehot", "what recall feeds back: the prediction as one-hot, or the raw output vector",
                            choices=FEEDBACKS)
    seed: int = setting(0, "random seed of the weights")
    stop_when_exact: bool = setting(False, "stop training at the first exact recall")
    # Tiny models run fastest on one thread. The sentinel is in the help, not in `note`, so that
    # the message stays "--threads must be >= 0, got -1".
    threads: int = setting(1, "CPU threads for torch, 0 = torch's default", ge=0)

    def problems(self) -> list[str]:
        """Every invalid setting, as messages that name the flag."""
        p = []
        if not self.text:
            p.append('TEXT is empty; pass the text to memorise (e.g. charnn memorize "hello world") or a --preset')
        elif self.alphabet:
            outside = sorted(set(self.text) - set(self.alphabet))
            if outside:
                shown = ", ".join(repr(c) for c in outside[:20])
                p.append(f"TEXT has {len(outside)} character(s) outside --alphabet: {shown}; "
                         f"add them to --alphabet, or leave --alphabet out to use the text's own characters")
        p += field_problems(self)
        if self.text and isinstance(self.batch_size, int) and self.batch_size > len(self.text) + 1:
            p.append(f"--batch-size {self.batch_size} is more sliding windows than the text has inputs "
                     f"({len(self.text) + 1}: its characters and <start>); lower --batch-size")
        if self.feedback == "raw" and self.input != "onehot":
            p.append("--feedback raw feeds the output vector back as the next input, which needs "
                     "--input onehot (an embedding takes ids); use --feedback onehot")
        return p


# The notebook's three experiments. Its LSTM was nn.LSTM(35, 35, 3) whose hidden state was
# itself the output; CharLM adds a linear head (hidden 35 -> 35), the one difference.
PRESETS: dict[str, tuple[str, dict]] = {
    "tutorial-rnn": (
        "the notebook's hand-written RNN cell: one-hot in, MSE, 100 epochs, raw-output feedback",
        {"text": TUTORIAL_SENTENCE, "alphabet": TUTORIAL_ALPHABET, "cell": "rnn-scratch", "layers": 1,
         "hidden": 35, "input": "onehot", "loss": "mse", "lr": 0.01, "epochs": 100, "batch_size": 1,
         "feedback": "raw"},
    ),
    "tutorial-lstm": (
        "the notebook's 3-layer nn.LSTM on the longer sentence: MSE, 1000 epochs, batch 1",
        {"text": TUTORIAL_SENTENCE_LONG, "alphabet": TUTORIAL_ALPHABET, "cell": "lstm", "layers": 3,
         "hidden": 35, "input": "onehot", "loss": "mse", "lr": 0.01, "epochs": 1000, "batch_size": 1,
         "feedback": "raw"},
    ),
    "tutorial-lstm-batch5": (
        "the same LSTM trained on 5 sliding windows per batch",
        {"text": TUTORIAL_SENTENCE_LONG, "alphabet": TUTORIAL_ALPHABET, "cell": "lstm", "layers": 3,
         "hidden": 35, "input": "onehot", "loss": "mse", "lr": 0.01, "epochs": 1000, "batch_size": 5,
         "feedback": "raw"},
    ),
}


def resolve(settings: dict) -> MemorizeConfig:
    """Defaults <- the preset named by settings["preset"] (if any) <- the other settings."""
    settings = dict(settings)
    preset = settings.pop("preset", None)
    base: dict = {}
    if preset:
        if preset not in PRESETS:
            raise CharnnError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        base = dict(PRESETS[preset][1])
    config = from_settings(MemorizeConfig, {**base, **settings}, "memorize")
    check_all(config.problems())
    return config


def format_presets() -> str:
    """Each preset: its name, what it is, and its settings as flags."""
    return "\n".join(f"{name}: {description}\n  " + " ".join(f"{flag_name(k)} {v!r}" for k, v in settings.items())
                     for name, (description, settings) in PRESETS.items())


@dataclass
class MemorizeResult:
    text: str
    recall: str  # the greedy recall (special tokens other than <end> shown by name)
    exact: bool
    char_accuracy: float  # recall vs text, position by position
    teacher_forced_accuracy: float  # targets predicted right from the true prefix, <end> included
    first_exact_epoch: int | None  # updates after which the recall was first exact; None = never
    epochs_run: int
    final_loss: float
    loss_curve: list[float]  # the loss of each update
    params: int
    vocab_size: int
    seconds: float
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def make_vocab(text: str, alphabet: str = "") -> Vocab:
    """The characters of `alphabet` (or of `text`), then <start> and <end>."""
    return Vocab(tuple(sorted(set(alphabet or text))), (START, END))


def sliding_windows(seq: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B windows over seq (n,): x (B, n-B), y (B, n-B); window k is x = seq[k : k+n-B].

    Window k's targets are its inputs shifted one ahead; window B-1 ends with <end>.
    """
    n = seq.shape[0]
    L = n - batch_size  # inputs per window
    x = torch.stack([seq[k : k + L] for k in range(batch_size)])  # (B, L)
    y = torch.stack([seq[k + 1 : k + 1 + L] for k in range(batch_size)])
    return x, y


def sequence_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean cross-entropy (the shared char_loss), or the notebook's MSE between the raw
    outputs and the one-hot targets (mean over characters and vocabulary entries)."""
    if kind == "ce":
        return char_loss(logits, y)
    target = F.one_hot(y, logits.shape[-1]).to(logits.dtype)  # (B, T, V)
    return F.mse_loss(logits, target)


@torch.no_grad()
def recall(model: CharLM, vocab: Vocab, length: int, feedback: str = "onehot") -> list[int]:
    """Greedy decoding from <start> for at most `length` characters, stopping at <end>.

    `feedback="raw"` feeds the raw output vector (the logits) back as the next input vector,
    as the notebook did; it needs a one-hot input model (input size = vocabulary size).
    """
    end = vocab.id_of(END)
    ids = torch.tensor([vocab.id_of(START)])
    state = model.initial_state(1)
    out: list[int] = []
    logits = None
    for _ in range(length):
        if feedback == "raw" and logits is not None:
            y, state = model.core(logits[:, None, :], state)  # the output vector as input (1, 1, V)
            logits = model.head(y)[:, 0]
        else:
            logits, state = model.step(ids, state)  # (1, V)
        nxt = int(logits.argmax(-1))
        if nxt == end:
            break
        out.append(nxt)
        ids = torch.tensor([nxt])
    return out


def char_accuracy(recalled: list[int], target: list[int]) -> float:
    """The share of target positions the recall got right; a recall cut short by <end> scores
    its missing characters as wrong."""
    return sum(a == b for a, b in zip(recalled, target)) / len(target)


def memorize(
    config: MemorizeConfig, on_epoch: Callable[[int, float], None] | None = None
) -> MemorizeResult:
    """Train a fresh model on config.text and measure its recall. `on_epoch(epoch, loss)` is
    called after each update (for progress)."""
    check_all(config.problems())
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    vocab = make_vocab(config.text, config.alphabet)
    ids = vocab.encode(config.text, what="TEXT")
    seq = torch.tensor([vocab.id_of(START), *ids.tolist(), vocab.id_of(END)])  # (n,)
    n_chars = len(config.text)
    x, y = sliding_windows(seq, config.batch_size)  # (B, L)
    full_x, full_y = seq[None, :-1], seq[None, 1:]  # the whole sequence, one window

    torch.manual_seed(config.seed)
    model = build_model(ModelConfig(
        model=config.cell, vocab_size=len(vocab), embed=config.embed, hidden=config.hidden,
        layers=config.layers, dropout=0.0, input=config.input,
    ))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    params = sum(p.numel() for p in model.parameters())

    def exact_now(train_logits: torch.Tensor) -> bool:
        if config.feedback == "raw":
            return vocab.decode(recall(model, vocab, n_chars, "raw"), specials=True) == config.text
        if config.batch_size == 1:  # the training pass is the teacher-forced pass: reuse it
            logits = train_logits.detach()
        else:
            with torch.no_grad():
                logits, _ = model(full_x)
        return bool((logits[0, :n_chars].argmax(-1) == full_y[0, :n_chars]).all())

    losses: list[float] = []
    first_exact: int | None = None
    # The forward pass of iteration e scores the model after e updates; the last one only scores.
    for epoch in range(config.epochs + 1):
        logits, _ = model(x)  # (B, L, V)
        if first_exact is None and exact_now(logits):
            first_exact = epoch
            if config.stop_when_exact:
                break
        if epoch == config.epochs:
            break
        loss = sequence_loss(logits, y, config.loss)
        if not torch.isfinite(loss):
            raise CharnnError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); lower --lr (now {config.lr:g})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])

    with torch.no_grad():
        logits, _ = model(x)
        final_loss = sequence_loss(logits, y, config.loss).item()
        teacher_forced = (logits.argmax(-1) == y).double().mean().item()
        recalled = recall(model, vocab, n_chars, config.feedback)
    target = ids.tolist()
    return MemorizeResult(
        text=config.text,
        recall=vocab.decode(recalled, specials=True),
        exact=recalled == target,
        char_accuracy=char_accuracy(recalled, target),
        teacher_forced_accuracy=teacher_forced,
        first_exact_epoch=first_exact,
        epochs_run=len(losses),
        final_loss=final_loss,
        loss_curve=losses,
        params=params,
        vocab_size=len(vocab),
        seconds=time.perf_counter() - started,
        config=asdict(config),
    )


def describe(config: MemorizeConfig) -> str:
    """One line saying what is being trained."""
    vocab_size = len(make_vocab(config.text, config.alphabet))
    layers = f"{config.layers} layer{'s' if config.layers > 1 else ''}"
    inp = "one-hot input" if config.input == "onehot" else f"embedding {config.embed}"
    loss = "MSE on one-hot targets" if config.loss == "mse" else "cross-entropy"
    return (f"memorising {len(config.text)} characters (vocabulary {vocab_size}, with <start> and <end>) "
            f"with {config.cell}, {layers} x {config.hidden} hidden, {inp}, {loss}, Adam lr {config.lr:g}, "
            f"{config.epochs} epochs, batch {config.batch_size}, seed {config.seed}")


def format_result(r: MemorizeResult) -> str:
    n = len(r.text)
    right = round(r.char_accuracy * n)
    first = f"after epoch {r.first_exact_epoch}" if r.first_exact_epoch is not None else "never"
    feedback = "raw-output" if r.config.get("feedback") == "raw" else "one-hot"
    return "\n".join([
        f"final loss {r.final_loss:.4f}; teacher-forced accuracy {r.teacher_forced_accuracy:.1%}",
        f"recall (greedy from <start>, {feedback} feedback):",
        r.recall,
        f"exact: {'yes' if r.exact else 'no'}; character accuracy {right}/{n} ({r.char_accuracy:.1%}); "
        f"first exact recall: {first}; {r.epochs_run} epochs in {r.seconds:.1f} s; {r.params:,} parameters",
    ])
