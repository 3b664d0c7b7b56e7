"""The `charnn` command: argparse subcommands mapped onto plain library functions.

Nothing below this module reads sys.argv. A user mistake (CharnnError, or a flag argparse
rejects) is one line on stderr and exit status 2; a bug is a traceback and exit status 1.
Flags are kebab-case spellings of the settings' field names; a flag not given keeps the
setting's default (or, with --resume, the run's saved value).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import MISSING, fields

from charnn.errors import CharnnError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise CharnnError(f"{message} (see {self.prog} --help)")


def _default(cls, name: str):
    f = {f.name: f for f in fields(cls)}[name]
    return f.default if f.default is not MISSING else f.default_factory()


def _flag(group, cls, name: str, help: str, **kw) -> None:
    """--kebab-name for the dataclass field `name`; help shows the field's default."""
    default = _default(cls, name)
    group.add_argument(
        "--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
        help=f"{help} (default: {default})", **kw,
    )


# --- train ------------------------------------------------------------------------------------
def _add_train(sub) -> None:
    from charnn.batching import LAYOUTS
    from charnn.corpus import ERROR_POLICIES
    from charnn.models import CORES, INPUTS, ModelConfig
    from charnn.train import DEFAULT_BUDGET_S, DTYPES, TrainConfig

    p = sub.add_parser(
        "train", help="train a model on text",
        description=(
            "Train a character-level language model. With no CORPUS, trains on the bundled tiny "
            f"Shakespeare; with no --max-steps, --max-time or --epochs, trains for "
            f"{DEFAULT_BUDGET_S:g} seconds."
        ),
    )
    p.add_argument("corpus", nargs="*", default=argparse.SUPPRESS, metavar="CORPUS",
                   help="text files or directories (default: the bundled tiny Shakespeare)")
    p.add_argument("--out", dest="out", default=argparse.SUPPRESS, metavar="DIR",
                   help="run directory to create (default: runs/<corpus name>, numbered if taken)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue a run where it stopped; only stopping, logging and device flags may change")
    p.add_argument("--preset", dest="preset", default=argparse.SUPPRESS, metavar="NAME",
                   help="start from a named bundle of settings; flags given still win (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")

    m = p.add_argument_group("model")
    _flag(m, ModelConfig, "model", "recurrent core", choices=list(CORES))
    _flag(m, ModelConfig, "layers", "stacked recurrent layers", type=int)
    _flag(m, ModelConfig, "hidden", "hidden units per layer", type=int)
    _flag(m, ModelConfig, "embed", "embedding size", type=int)
    _flag(m, ModelConfig, "dropout", "dropout between layers and before the head, 0 = off", type=float)
    _flag(m, ModelConfig, "input", "input encoding", choices=list(INPUTS))
    _flag(m, ModelConfig, "block", "mingru/minlstm stacking: plain, or residual (the paper's language model); "
          "auto = residual for mingru/minlstm", choices=["auto", "plain", "residual"])
    _flag(m, ModelConfig, "expand", "--block residual: recurrent state size as a multiple of --hidden", type=float)
    _flag(m, ModelConfig, "mlp", "--block residual: MLP size as a multiple of --hidden, 0 = no MLP", type=float)
    _flag(m, ModelConfig, "conv", "--block residual: causal convolution kernel size, 0 = off", type=int)

    d = p.add_argument_group("data")
    _flag(d, TrainConfig, "val_fraction", "fraction of the corpus (its end) held out for validation", type=float)
    _flag(d, TrainConfig, "encoding", "text encoding of the corpus files")
    _flag(d, TrainConfig, "errors", "what to do with bytes invalid in --encoding", choices=list(ERROR_POLICIES))
    _flag(d, TrainConfig, "batching", "batch layout: stateful TBPTT streams or random windows", choices=list(LAYOUTS))
    _flag(d, TrainConfig, "batch_size", "sequences per batch", type=int)
    _flag(d, TrainConfig, "seq_len", "characters per sequence (the TBPTT window)", type=int)

    o = p.add_argument_group("optimisation")
    _flag(o, TrainConfig, "lr", "peak learning rate of AdamW", type=float)
    _flag(o, TrainConfig, "min_lr_ratio", "final learning rate as a fraction of --lr (cosine decay)", type=float)
    _flag(o, TrainConfig, "warmup", "steps of linear learning-rate warmup", type=int)
    _flag(o, TrainConfig, "weight_decay", "AdamW weight decay on weight matrices", type=float)
    _flag(o, TrainConfig, "grad_clip", "maximum gradient norm, 0 = off", type=float)
    _flag(o, TrainConfig, "dtype", "autocast precision; auto = bfloat16 where the hardware has it natively",
          choices=["auto", *DTYPES])

    s = p.add_argument_group("stopping, evaluation, saving")
    _flag(s, TrainConfig, "max_steps", "stop after this many steps in all, 0 = no limit", type=int)
    _flag(s, TrainConfig, "max_time", "stop after this many seconds of training, 0 = no limit", type=float)
    _flag(s, TrainConfig, "epochs", "stop after this many passes over the training text, 0 = no limit", type=float)
    _flag(s, TrainConfig, "eval_every", "evaluate on the validation split every N steps, 0 = only at the end", type=int)
    _flag(s, TrainConfig, "eval_streams", "parallel segments of the stateful validation pass", type=int)
    _flag(s, TrainConfig, "patience", "stop after N evaluations without improvement, 0 = off", type=int)
    _flag(s, TrainConfig, "save_every", "save a resume point every N steps, 0 = only at the end", type=int)
    _flag(s, TrainConfig, "log_every", "steps between metrics lines", type=int)

    x = p.add_argument_group("other")
    _flag(x, TrainConfig, "seed", "random seed (weights, dropout, batch order)", type=int)
    _flag(x, TrainConfig, "sample_chars", "characters of sample printed at the end, 0 = none", type=int)
    _flag(x, TrainConfig, "device", "torch device: auto, cpu, cuda, cuda:N, mps")
    _flag(x, TrainConfig, "threads", "CPU threads for torch, 0 = torch's default", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from charnn.api import load
    from charnn.train import Trainer, format_summary, resolve

    if args.list_presets:
        from charnn.presets import format_presets

        print(format_presets())
        return 0
    settings = {k: v for k, v in vars(args).items()
                if k not in ("func", "resume", "quiet", "command", "list_presets")}
    model_config, cfg = resolve(settings, args.resume)
    trainer = Trainer(model_config, cfg, resume=args.resume is not None, progress=not args.quiet)
    summary = trainer.run()
    if summary.stop_reason == "finished earlier":
        print(f"run {summary.run_dir} already finished at step {summary.step}; "
              f"pass a larger --max-steps to train it further")
        return 0
    print(format_summary(summary))
    if summary.stop_reason == "interrupted":
        print(f"resume with: charnn train --resume {summary.run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if cfg.sample_chars:
        model = load(summary.run_dir)
        print(f"--- sample (temperature 0.8, seed 0) from {summary.run_dir} ---")
        _write_stream(model.stream("", cfg.sample_chars, temperature=0.8, seed=0))
        print()
    return 0


# --- sample -----------------------------------------------------------------------------------
def _add_sample(sub) -> None:
    from charnn.vocab import UNKNOWN_POLICIES

    p = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text from a run's best weights, streamed as it is generated.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by charnn train")
    p.add_argument("--prime", default="", help="text to start from; it is printed first (default: none)")
    p.add_argument("--length", type=int, default=500, help="characters to generate per sample (default: 500)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature, 0 = greedy (default: 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="sample only from the K most likely characters, 0 = off (default: 0)")
    p.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set of characters with probability >= P, 1 = off (default: 1.0)")
    p.add_argument("--seed", type=int, default=None, help="random seed; the same seed gives the same text (default: random, printed on stderr)")
    p.add_argument("--num-samples", type=int, default=1, help="samples to generate, sample i with seed + i (default: 1)")
    p.add_argument("--stop", action="append", default=[], metavar="STRING", help="stop a sample before this string (repeatable)")
    p.add_argument("--unknown", choices=UNKNOWN_POLICIES, default="error", help="prime characters outside the vocabulary: error, skip or replace with <unk> (default: error)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(func=_cmd_sample)


def _write_stream(pieces) -> None:
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()


def _cmd_sample(args) -> int:
    from charnn.api import load
    from charnn.sample import sampling_problems

    problems = sampling_problems(args.temperature, args.top_k, args.top_p)
    if args.length < 0:
        problems.append(f"--length must be >= 0, got {args.length}")
    if args.num_samples < 1:
        problems.append(f"--num-samples must be a positive integer, got {args.num_samples}")
    if problems:
        raise CharnnError("; ".join(problems))
    model = load(args.run_dir, args.device)
    model.prime_ids(args.prime, args.unknown)  # report unknown characters before printing anything
    seed = args.seed
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") >> 1
        print(f"(seed {seed})", file=sys.stderr)
    for i in range(args.num_samples):
        if i:
            print("\n" + "-" * 40)
        sys.stdout.write(args.prime)
        _write_stream(model.stream(args.prime, args.length, args.temperature, args.top_k, args.top_p,
                                   seed + i, args.stop, args.unknown))
    print()
    return 0


# --- eval -------------------------------------------------------------------------------------
def _add_eval(sub) -> None:
    from charnn.corpus import ERROR_POLICIES
    from charnn.evaluate import PROTOCOLS
    from charnn.vocab import UNKNOWN_POLICIES

    p = sub.add_parser("eval", help="loss, bits per character and perplexity of a run",
                       description="Score a run's best weights on its validation split or on a text file.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by charnn train")
    p.add_argument("--text", metavar="FILE", default=None, help="score this file instead of the validation split")
    p.add_argument("--protocol", choices=PROTOCOLS, default="stateful",
                   help="stateful: one pass carrying the state; windows: 256-character windows from a fresh state (default: stateful)")
    p.add_argument("--streams", type=int, default=1, help="stateful protocol: score in N parallel warmed-up segments, 1 = one exact pass (default: 1)")
    p.add_argument("--unknown", choices=UNKNOWN_POLICIES, default="error", help="characters outside the vocabulary: error, skip or replace with <unk> (default: error)")
    p.add_argument("--encoding", default="utf-8", help="encoding of --text (default: utf-8)")
    p.add_argument("--errors", choices=ERROR_POLICIES, default="strict", help="bytes invalid in --encoding (default: strict)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from charnn.api import load
    from charnn.corpus import read_corpus
    from charnn.evaluate import evaluate_ids, validation_text

    if args.streams < 1:
        raise CharnnError(f"--streams must be a positive integer, got {args.streams}")
    model = load(args.run_dir, args.device)
    if args.text is not None:
        text, what = read_corpus([args.text], args.encoding, args.errors).text, args.text
    else:
        from charnn.checkpoint import read_run

        text, what = validation_text(read_run(args.run_dir)), "validation split"
    ids = model.vocab.encode(text, args.unknown, what=f"the evaluation text ({what})")
    result = evaluate_ids(model.model, ids, args.protocol, streams=args.streams)
    if args.json:
        print(json.dumps({**result.to_dict(), "text": what, "run": str(args.run_dir)}))
    else:
        print(f"{what}: {result.chars:,} characters, {result.protocol} protocol: loss {result.loss:.4f} "
              f"nats/char, {result.bpc:.4f} bits/char, perplexity {result.perplexity:.3f}")
    return 0


# --- main -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from charnn import __version__

    parser = _Parser(prog="charnn", description="Character-level recurrent language models.")
    parser.add_argument("--version", action="version", version=f"charnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_train(sub)
    _add_sample(sub)
    _add_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except CharnnError as e:
        print(f"charnn: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("charnn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (charnn sample ... | head): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
