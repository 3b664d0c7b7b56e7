"""Speed of minGRU / minLSTM against torch's fused GRU / LSTM at equal parameter count.

    python benchmarks/minrnn_speed.py                 # the full run (about 15 minutes on 2 cores)
    python benchmarks/minrnn_speed.py --quick         # a smoke run (under a minute)

Three measurements, each a ratio taken in one run (models are timed round-robin, so a busy
machine slows every model alike; absolute figures are printed but not to be trusted alone):

1. training: chars/s of a full training step (forward, backward, AdamW) of the whole
   CharLM, at sequence lengths 128 / 512 / 2048 with the same characters per batch (so the
   batch shrinks as the sequence grows: a fused RNN's per-step matrix products get smaller,
   a minRNN's do not), in float32 and in bfloat16 autocast (--dtype auto's choice on AMX CPUs);
2. scans: the minRNN layer's forward + backward with the sequential scan ("loop", the CPU
   default) against the paper's log-space scan ("log");
3. sampling: chars/s of charnn.sample.generate, one stream and 32 streams, float32.

Every candidate's --hidden is solved so that its parameter count matches the reference model
(--match, by default gru 2 x 512 with a 64-wide embedding) to within 1 %. Models are given as
"core:setting=value,...", settings named like ModelConfig fields (embed=hidden ties the
embedding width to the solved hidden size). --markdown FILE appends the tables, the command
and the date to FILE (e.g. BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import torch

from charnn.infer.sampling import generate
from charnn.models import ModelConfig, build_model
from charnn.models.lm import char_loss

VOCAB = 65  # tiny Shakespeare's

DEFAULT_MODELS = [
    "gru:layers=2",
    "lstm:layers=2",
    "mingru:layers=2,embed=hidden",  # the residual stack with ModelConfig's defaults
    "minlstm:layers=2,embed=hidden",
    "mingru:layers=2,embed=hidden,mlp=4",
    "mingru:block=plain,layers=2",
]


def parse_spec(spec: str) -> dict:
    """'mingru:block=residual,layers=3' -> ModelConfig settings (values typed like the fields)."""
    name, _, rest = spec.partition(":")
    settings: dict = {"model": name}
    types = {f: type(v) for f, v in ModelConfig().to_dict().items()}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        settings[key] = value if (key == "embed" and value == "hidden") else types[key](value)
    return settings


def build(settings: dict, hidden: int):
    s = dict(settings, hidden=hidden, vocab_size=VOCAB)
    if s.get("embed") == "hidden":
        s["embed"] = hidden
    return build_model(ModelConfig(**s))


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def match_hidden(settings: dict, target: int) -> int:
    """The hidden size whose parameter count is closest to target (counts grow with hidden)."""
    lo, hi = 1, 8192
    while lo < hi:
        mid = (lo + hi) // 2
        if n_params(build(settings, mid)) < target:
            lo = mid + 1
        else:
            hi = mid
    return min((lo - 1, lo), key=lambda h: abs(n_params(build(settings, max(h, 1))) - target)) or 1


def label(settings: dict, hidden: int) -> str:
    extra = ",".join(f"{k}={v}" for k, v in settings.items() if k != "model")
    return f"{settings['model']}({extra},hidden={hidden})" if extra else f"{settings['model']}(hidden={hidden})"


class TrainStep:
    def __init__(self, model, batch: int, seq_len: int, dtype: str) -> None:
        self.model = model.train()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, VOCAB, (batch, seq_len), generator=g)
        self.y = torch.randint(0, VOCAB, (batch, seq_len), generator=g)
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def __call__(self) -> None:
        with self.autocast:
            logits, _ = self.model(self.x)
        char_loss(logits, self.y).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def round_robin(fns: dict, steps: int, rounds: int) -> dict:
    """Median seconds per call of each fn, timed in turns so that load hits all alike."""
    for fn in fns.values():
        fn()  # warm-up: allocator, oneDNN primitives
    times: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            times[k].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bench_training(models, seq_lens, chars, dtypes, steps, rounds) -> str:
    out = []
    for dtype in dtypes:
        rows = []
        for T in seq_lens:
            B = max(1, chars // T)
            fns = {name: TrainStep(m, B, T, dtype) for name, m in models.items()}
            secs = round_robin(fns, steps, rounds)
            cps = {k: B * T / s for k, s in secs.items()}
            base = {core: next((v for k, v in cps.items() if k.startswith(core + "(")), None) for core in ("gru", "lstm")}
            for name in models:
                ratios = [f"{cps[name] / b:.2f}" if b else "-" for b in (base["gru"], base["lstm"])]
                rows.append([T, B, name, f"{cps[name]:,.0f}", *ratios])
            print(f"training {dtype} T={T}: " + ", ".join(f"{k} {v:,.0f}" for k, v in cps.items()), flush=True)
        out.append(f"Training chars/s, {dtype} ({chars} characters per batch):\n\n"
                   + table(["seq len", "batch", "model", "chars/s", "/ gru", "/ lstm"], rows))
    return "\n\n".join(out)


def bench_scans(kinds, width, seq_lens, chars, steps, rounds) -> str:
    from charnn.models.minrnn import MinRNN

    rows = []
    for kind in kinds:
        for T in seq_lens:
            B = max(1, chars // T)
            x = torch.randn(B, T, width)
            fns = {}
            for scan in ("loop", "log"):
                torch.manual_seed(0)
                core = MinRNN(kind, width, width, 1, 0.0)
                core.scan = scan

                def step(core=core, x=x):
                    y, _ = core(x)
                    y.sum().backward()

                fns[scan] = step
            secs = round_robin(fns, steps, rounds)
            rows.append([f"min{kind}", T, B, width, f"{secs['loop'] * 1e3:.1f}", f"{secs['log'] * 1e3:.1f}",
                         f"{secs['log'] / secs['loop']:.2f}"])
            print(f"scan min{kind} T={T}: loop {secs['loop'] * 1e3:.1f} ms, log {secs['log'] * 1e3:.1f} ms", flush=True)
    return ("One minRNN layer, forward + backward, float32, loop scan vs the paper's log-space scan:\n\n"
            + table(["core", "seq len", "batch", "width", "loop ms", "log ms", "log / loop"], rows))


def bench_sampling(models, length, rounds) -> str:
    rows = []
    for streams in (1, 32):
        fns = {}
        for name, m in models.items():
            m.eval()

            def run(m=m, streams=streams):
                for _ in generate(m, [[0]] * streams, length, temperature=1.0, seed=0):
                    pass

            fns[name] = run
        secs = round_robin(fns, 1, rounds)
        for name in models:
            rows.append([streams, name, f"{streams * length / secs[name]:,.0f}"])
        print(f"sampling {streams} stream(s): " + ", ".join(f"{k} {streams * length / v:,.0f}" for k, v in secs.items()),
              flush=True)
    return (f"Sampling chars/s (charnn.sample.generate, {length} characters, float32):\n\n"
            + table(["streams", "model", "chars/s"], rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny models, short sequences")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="SPEC",
                   help="core:setting=value,... (default: %(default)s)")
    p.add_argument("--match", default="gru:layers=2,hidden=512,embed=64",
                   help="the reference model whose parameter count every model matches (default: %(default)s)")
    p.add_argument("--seq-lens", default="128,512,2048", help="comma-separated (default: %(default)s)")
    p.add_argument("--chars", type=int, default=8192, help="characters per training batch (default: %(default)s)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2, help="training steps per timing (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="round-robin rounds, the median is kept (default: %(default)s)")
    p.add_argument("--sample-length", type=int, default=500, help="characters per sampling timing (default: %(default)s)")
    p.add_argument("--parts", default="training,scans,sampling", help="comma-separated (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads, 0 = torch's default (default: 0)")
    p.add_argument("--markdown", metavar="FILE", help="append the results to FILE")
    args = p.parse_args(argv)
    if args.quick:
        args.match, args.seq_lens, args.chars = "gru:layers=2,hidden=48,embed=16", "32,128", 512
        args.steps, args.rounds, args.sample_length = 1, 2, 30
    if args.threads:
        torch.set_num_threads(args.threads)
    seq_lens = [int(t) for t in args.seq_lens.split(",")]
    parts = args.parts.split(",")

    ref = parse_spec(args.match)
    ref_hidden = ref.pop("hidden")
    target = n_params(build(ref, ref_hidden))
    models = {}
    for spec in args.models:
        settings = parse_spec(spec)
        hidden = ref_hidden if settings == ref else match_hidden(settings, target)
        torch.manual_seed(0)
        m = build(settings, hidden)
        models[label(settings, hidden)] = m
    print(f"parameters (target {target:,}): " + ", ".join(f"{k} {n_params(m):,}" for k, m in models.items()),
          flush=True)

    sections = [f"Models (parameters; reference {args.match}, {target:,}):\n\n"
                + table(["model", "parameters"], [[k, f"{n_params(m):,}"] for k, m in models.items()])]
    if "training" in parts:
        sections.append(bench_training(models, seq_lens, args.chars, args.dtypes.split(","), args.steps, args.rounds))
    if "scans" in parts:
        width = 64 if args.quick else 512
        sections.append(bench_scans(["gru", "lstm"], width, seq_lens, args.chars, args.steps, args.rounds))
    if "sampling" in parts:
        sections.append(bench_sampling(models, args.sample_length, args.rounds))

    report = "\n\n".join(sections)
    print("\n" + report)
    if args.markdown:
        command = "python benchmarks/minrnn_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
        header = (f"## minGRU / minLSTM speed ({datetime.date.today()}, torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs)\n\n`{command.strip()}`\n\n")
        with open(args.markdown, "a", encoding="utf-8") as f:
            f.write("\n" + header + report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
