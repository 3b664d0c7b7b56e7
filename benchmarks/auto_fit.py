"""Fit --preset auto's law to the grid (benchmarks/auto_grid.py's JSON lines), and judge the choice.

    python benchmarks/auto_fit.py /work/bench/grid/grid.jsonl            # fit: prints the Law(...) to use
    python benchmarks/auto_fit.py grid.jsonl --markdown BENCHMARKS.md    # the grid, the choices, vs best
    python benchmarks/auto_fit.py grid.jsonl --replay                    # today's rule on the probes recorded

Fit: loss = e + a / P^alpha + b / C^beta (P parameters, C characters seen, both in millions)
on the windows loss of every rung run with at least auto.MIN_STEPS steps (fewer do not finish
their warmup and cosine: the choice never takes such a rung), least squares in torch from
several starts. --replay runs today's `auto.choose` (law, margin, minimum steps) on the step
times each --preset auto run recorded, and looks its choice up in the grid. Then, per machine and budget: the grid's best point, the fixed default
(2 x 384), the `--preset auto` run (rows with "auto": true) and their distances in nats.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import torch

from charnn.train import auto
from charnn.train.auto import MIN_STEPS, Curve, Law

DEFAULT = "2x384"  # the fixed model of `charnn train` before --preset auto
CURVE_RUNS = 4  # a rung gets its own curve from this many runs
PLATEAU = 2.5  # nats: a run above this has learnt little more than character frequencies (unigram ~3.3)


def _least_squares(predict, L: torch.Tensor, starts: list[list[float]], rounds: int, max_iter: int
                   ) -> tuple[float, torch.Tensor]:
    """The lowest mean squared error of `predict(raw)` against L from any of the starts (LBFGS)."""
    best = None
    for start in starts:
        raw = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([raw], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure(raw=raw, opt=opt) -> torch.Tensor:
            opt.zero_grad()
            v = ((predict(raw) - L) ** 2).mean()
            v.backward()
            return v

        for _ in range(rounds):
            opt.step(closure)
        v = float(((predict(raw) - L) ** 2).mean().detach())
        if math.isfinite(v) and (best is None or v < best[0]):
            best = (v, raw.detach().clone())
    return best


def fit(rows: list[dict]) -> tuple[Law, float]:
    """The law: e free, the other four positive (fitted as logarithms)."""
    P = torch.tensor([r["params"] / 1e6 for r in rows], dtype=torch.float64)
    C = torch.tensor([r["chars"] / 1e6 for r in rows], dtype=torch.float64)
    L = torch.tensor([r["windows"] for r in rows], dtype=torch.float64)
    starts = [[e0, math.log(0.2), math.log(alpha0), math.log(0.5), math.log(beta0)]
              for e0 in (0.8, 1.0, 1.2) for alpha0 in (0.3, 0.6) for beta0 in (0.3, 0.6)]
    v, raw = _least_squares(lambda r: r[0] + r[1].exp() * P ** -r[2].exp() + r[3].exp() * C ** -r[4].exp(),
                            L, starts, rounds=5, max_iter=500)
    law = Law(e=float(raw[0]), a=float(raw[1].exp()), alpha=float(raw[2].exp()), b=float(raw[3].exp()),
              beta=float(raw[4].exp()))
    return law, math.sqrt(v)


def fit_curve(rows: list[dict]) -> tuple[Curve, float]:
    """One rung's e + b / C^beta by least squares from several starts (b and beta positive)."""
    C = torch.tensor([r["chars"] / 1e6 for r in rows], dtype=torch.float64)
    L = torch.tensor([r["windows"] for r in rows], dtype=torch.float64)
    starts = [[e0, math.log(b0), math.log(beta0)] for e0 in (1.2, 1.35, 1.45) for b0 in (0.2, 0.5) for beta0 in (0.5, 1.0)]
    v, raw = _least_squares(lambda r: r[0] + r[1].exp() * C ** -r[2].exp(), L, starts, rounds=3, max_iter=300)
    return Curve(e=float(raw[0]), b=float(raw[1].exp()), beta=float(raw[2].exp()),
                 seen=max(r["chars"] for r in rows)), math.sqrt(v)


def fit_curves(rows: list[dict]) -> dict[str, Curve]:
    """A curve for each rung of the ladder with at least CURVE_RUNS runs (grid and auto alike)."""
    rungs = {c.name: c.settings() for c in auto.LADDER}
    by = defaultdict(list)
    for r in rows:
        if r["size"] in rungs and all(r[k] == rungs[r["size"]][k] for k in ("batch_size", "seq_len", "lr")):
            by[r["size"]].append(r)
    return {name: fit_curve(rs)[0] for name, rs in by.items() if len(rs) >= CURVE_RUNS}


def _record(run: str) -> dict | None:
    """The choice --preset auto recorded in the run's config.json."""
    path = Path(run) / "config.json"
    return json.loads(path.read_text())["train"].get("auto") if path.exists() else None


def replay(rows: list[dict]) -> list[str]:
    """Today's choice from each auto run's recorded probe, and the grid's loss for it."""
    grid = {(r["machine"], r["budget"], r["size"]): r["windows"] for r in rows if not r["auto"]}
    out = ["| machine | budget | recorded choice | today's rule on the same step times | its grid loss | grid best | fixed 2x384 |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        rec = r.get("auto_record") or (_record(r["run"]) if r["auto"] else None)
        if not r["auto"] or not rec:
            continue
        steps = {c["name"]: (c["params"], c["step_seconds"]) for c in rec["candidates"]}

        def measure(settings: dict, steps: dict = steps) -> tuple[int, float | None]:
            return steps.get(f"{settings['layers']}x{settings['hidden']}", (0, None))  # not timed then: stop

        chosen, _, _ = auto.choose({}, rec["budget"], rec["train_chars"], measure, clock=lambda: 0.0)
        cell = [v for (m, b, _), v in grid.items() if m == r["machine"] and b == r["budget"]]
        got = grid.get((r["machine"], r["budget"], chosen.name))
        fixed = grid.get((r["machine"], r["budget"], DEFAULT))
        out.append(f"| {r['machine']} | {r['budget'] / 60:g} min | {rec['chosen']} | {chosen.name} | "
                   f"{f'{got:.4f}' if got else 'not in the grid'} | {min(cell):.4f} | {f'{fixed:.4f}' if fixed else 'n/a'} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jsonl")
    ap.add_argument("--markdown", help="append the tables to this file")
    ap.add_argument("--replay", action="store_true", help="only: today's rule on the recorded probes")
    args = ap.parse_args()
    rows = [json.loads(x) for x in Path(args.jsonl).read_text().splitlines() if x.strip()]
    if args.replay:
        print("\n".join(replay(rows)))
        return
    latest = {(r["machine"], r["size"] if not r["auto"] else "auto", r["budget"]): r for r in rows}
    rows = list(latest.values())  # a rerun replaces the earlier row
    # An auto run is a run of its rung too. A run that ended above PLATEAU nats never left the
    # plateau of character frequencies (a wide rung's first few hundred steps): no law of
    # model size and characters describes it.
    used = [r for r in rows if r["steps"] >= MIN_STEPS and r["windows"] <= PLATEAU]
    for r in rows:
        if r["steps"] >= MIN_STEPS and r["windows"] > PLATEAU:
            print(f"left out: {r['machine']} {r['size']} {r['budget']:.0f}s, {r['steps']} steps, windows {r['windows']}")
    law, rms = fit(used)
    print(f"fitted on the {len(used)} of {len(rows)} runs with >= {MIN_STEPS} steps (rms {rms:.4f} nats):")
    print(f"LAW = Law(e={law.e:.4f}, a={law.a:.4f}, alpha={law.alpha:.4f}, b={law.b:.4f}, beta={law.beta:.4f})")
    curves = fit_curves(used)
    print("CURVES = {" + ", ".join(f'"{n}": Curve({c.e:.4f}, {c.b:.4f}, {c.beta:.4f}, {c.seen:.4g})'
                                   for n, c in curves.items()) + "}")
    for n, c in curves.items():
        rs = [r for r in used if r["size"] == n]
        err = math.sqrt(sum((c.loss(r["chars"]) - r["windows"]) ** 2 for r in rs) / len(rs))
        print(f"  {n}: {len(rs)} runs, rms {err:.4f}")
    cells = defaultdict(list)
    for r in rows:
        cells[(r["machine"], r["budget"])].append(r)
    out = ["| machine | budget | grid (windows loss per rung) | grid best | fixed 2x384 | auto: chose | its rung on the grid "
           "(- best) | auto run | its pace / the grid rung's | auto run - best | auto run - fixed |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (machine, budget), rs in sorted(cells.items()):
        g = [r for r in rs if not r["auto"]]
        a = [r for r in rs if r["auto"]]
        if not g:
            continue
        best = min(g, key=lambda r: r["windows"])
        fixed = next((r for r in g if r["size"] == DEFAULT), None)
        shown = ", ".join(f"{r['size']} {r['windows']:.3f}" for r in sorted(g, key=lambda r: r["params"]))
        cell = [machine, f"{budget / 60:g} min", shown, f"{best['size']} **{best['windows']:.4f}**",
                f"{fixed['windows']:.4f}" if fixed else "n/a"]
        if a:
            x = a[-1]
            rec = x.get("auto_record") or _record(x["run"])
            probe = f", probe {rec['probe_seconds']:.1f} s" if rec else ""
            same = next((r for r in g if r["size"] == x["size"]), None)  # the chosen rung's own grid run
            cell += [f"{x['size']} (drop {x['dropout']}{probe})",
                     f"{same['windows']:.4f} ({same['windows'] - best['windows']:+.4f})" if same else "not in the grid",
                     f"**{x['windows']:.4f}**", f"{x['cps'] / same['cps']:.2f}" if same else "",
                     f"{x['windows'] - best['windows']:+.4f}",
                     f"{x['windows'] - fixed['windows']:+.4f}" if fixed else "n/a"]
        else:
            cell += ["not run", "", "", "", "", ""]
        out.append("| " + " | ".join(cell) + " |")
    text = "\n".join(out)
    print("\nthe law's pick from each cell's measured characters (in-sample), and its regret:")
    for (machine, budget), rs in sorted(cells.items()):
        g = [r for r in rs if not r["auto"]]
        ok = [r for r in g if r["steps"] >= MIN_STEPS] or g[:1]
        pick = min(ok, key=lambda r: law.loss(r["params"], r["chars"]))
        best = min(g, key=lambda r: r["windows"])
        print(f"  {machine:8} {budget:5.0f}s  law picks {pick['size']} ({pick['windows']:.4f}), "
              f"best {best['size']} ({best['windows']:.4f}): {pick['windows'] - best['windows']:+.4f}")
    print(text)
    print("\nresiduals (windows - law):")
    for r in used:
        print(f"  {r['machine']:8} {r['size']:6} {r['budget']:5.0f}s  {r['windows']:.4f}  "
              f"{r['windows'] - law.loss(r['params'], r['chars']):+.4f}")
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
