"""charnn sample, charnn eval and charnn score: what a trained run says about text. Each command
is one library call."""

from __future__ import annotations

import json
import sys

from charnn.cli.common import given_settings, write_stream
from charnn.settings import add_flags


# --- sample -----------------------------------------------------------------------------------
def add_sample(sub) -> None:
    from charnn.infer.model import SampleCommand

    p = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text from a run's best weights, streamed as it is generated.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by charnn train")
    add_flags(p, SampleCommand, ["prime", "length", "temperature", "top_k", "top_p", "seed", "num_samples", "stop",
                                 "unknown", "device", "backend", "quantize", "novelty", "format"])
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(args) -> int:
    from charnn.infer.model import SampleCommand, sample_run

    config = SampleCommand(**given_settings(args, "run_dir"))
    samples = sample_run(args.run_dir, config)
    if config.seed is None:
        print(f"(seed {samples.seed})", file=sys.stderr)
    if samples.model.documents is not None:  # a documents run: whole documents, one per line
        return _write_documents(samples, config)
    for i, pieces in enumerate(samples):
        if config.format == "jsonl":
            record = {"sample": i, "seed": samples.seed + i, "prime": config.prime, "text": "".join(pieces)}
            if samples.novelty:
                record["novelty"] = samples.novelty.measure(record["text"]).to_dict()
            print(json.dumps(record, ensure_ascii=False), flush=True)
            continue
        if i:
            print("-" * 40)
        sys.stdout.write(config.prime)
        text = write_stream(pieces)
        print(flush=True)
        if samples.novelty:
            print(f"novelty: {samples.novelty.summary(samples.novelty.measure(text))}", file=sys.stderr, flush=True)
    return 0


def _write_documents(samples, config) -> int:
    cut = 0
    found = {"train": 0, "held_out": 0, "new": 0}
    for doc in samples.documents():
        cut += not doc.ended
        record = doc.to_dict()
        if samples.document_sets is not None:
            record["novelty"] = samples.document_novelty(doc)
            found[record["novelty"]] += 1
        print(json.dumps(record, ensure_ascii=False) if config.format == "jsonl" else doc.line(), flush=True)
    n = config.num_samples
    if cut:
        print(f"({n - cut} of {n} documents ended at <end>; {cut} cut at --length {config.length} or a --stop)",
              file=sys.stderr)
    if samples.document_sets is not None:
        print(f"novelty: of {n} documents, {found['train']} are in the training set, {found['held_out']} in the "
              f"held-out set, {found['new']} are new", file=sys.stderr)
    return 0


# --- eval -------------------------------------------------------------------------------------
def add_eval(sub) -> None:
    from charnn.infer.evalrun import EvalConfig

    p = sub.add_parser("eval", help="loss, bits per character and perplexity of a run",
                       description="Score a run's best weights on its validation split or on a text file.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by charnn train")
    add_flags(p, EvalConfig, ["text", "protocol", "window", "streams", "unknown", "encoding", "errors"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_flags(p, EvalConfig, ["device"])
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from charnn.infer.evalrun import EvalConfig, evaluate_run

    config = EvalConfig(**given_settings(args, "run_dir", "json"))
    result, what = evaluate_run(args.run_dir, config)
    if args.json:
        print(json.dumps({**result.to_dict(), "text": what, "run": str(args.run_dir)}))
    else:
        scored = "characters and <end> tokens" if result.protocol == "documents" else "characters"
        print(f"{what}: {result.chars:,} {scored}, {result.protocol} protocol: loss {result.loss:.4f} "
              f"nats/char, {result.bpc:.4f} bits/char, perplexity {result.perplexity:.3f}")
    return 0


# --- score ------------------------------------------------------------------------------------
def add_score(sub) -> None:
    from charnn.infer.score import ScoreConfig

    p = sub.add_parser(
        "score", help="per-character surprisal of a text and the model's alternatives (JSONL, JSON, HTML)",
        description=("Score every character of FILE with a run's best weights, as charnn eval --text FILE does "
                     "(stateful protocol, the same total): one JSON line per character on stdout (its offsets, "
                     "log-probability, bits and the most likely characters there), or one JSON document "
                     "(--json), and/or an HTML page coloured by surprisal (--html OUT). The totals go to stderr."),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by charnn train")
    p.add_argument("file", metavar="FILE", help="the text to score (a file, a directory or a bundled corpus's name)")
    add_flags(p, ScoreConfig, ["top", "unknown", "encoding", "errors", "html"])
    p.add_argument("--json", action="store_true", help="print one JSON document (totals and positions) "
                                                       "instead of one line per character")
    add_flags(p, ScoreConfig, ["device"])
    p.set_defaults(func=_cmd_score)


def _cmd_score(args) -> int:
    from charnn.infer.score import ScoreConfig, score_file
    from charnn.infer.scorepage import format_summary, write_score

    config = ScoreConfig(**given_settings(args, "run_dir", "file", "json"))
    scoring = score_file(args.run_dir, args.file, config)
    # With --html alone, stdout stays quiet: the page is what was asked for.
    out = sys.stdout.buffer if args.json or config.html is None else None
    write_score(scoring, out, as_document=args.json)
    print(format_summary(scoring) + (f"; page {config.html}" if config.html else ""), file=sys.stderr)
    return 0


