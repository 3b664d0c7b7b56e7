"""--preset auto (train/auto.py): the choice from measured step times, recorded, resumed, overridden."""

import json

import pytest

import charnn
from charnn.cli import main
from charnn.models import ModelConfig
from charnn.train import auto
from charnn.train.auto import LADDER, choose, options
from charnn.train.config import resolve
from charnn.train.distributed import Dist


def machine(flops_per_s: float, calls: list | None = None, too_big_from: int | None = None):
    """A fake probe: a step costs 6 x parameters x characters / flops_per_s seconds."""

    def measure(settings):
        mc = ModelConfig(model="lstm", layers=settings["layers"], hidden=settings["hidden"], embed=settings["embed"],
                         vocab_size=auto.NOMINAL_VOCAB)
        p = mc.parameter_count()
        if calls is not None:
            calls.append(settings["hidden"] * 10 + settings["layers"])
        if too_big_from is not None and p >= too_big_from:
            return p, None
        return p, 6 * p * settings["batch_size"] * settings["seq_len"] / flops_per_s

    return measure


def still(_=None):
    return 0.0


def test_the_choice_is_deterministic_given_the_step_times():
    for speed in (3e9, 3e10, 1e11, 3e11, 3e12):
        for budget in (60, 120, 300, 600):
            a, found_a, _ = choose({}, budget, 1e6, machine(speed), clock=still)
            b, found_b, _ = choose({}, budget, 1e6, machine(speed), clock=still)
            assert a == b and found_a == found_b
            low = min(o.predicted for o in found_a)
            # The argmin, or the fixed 2 x 384 when nothing is predicted better by more than the margin.
            assert a.predicted == low or (a.name == LADDER[auto.KEEP].name and a.predicted < low + auto.SWITCH_MARGIN)


def test_the_fixed_model_is_kept_unless_another_is_clearly_better():
    def at(step_of: dict):
        def measure(settings):
            p = ModelConfig(model="lstm", layers=settings["layers"], hidden=settings["hidden"], embed=64,
                            vocab_size=auto.NOMINAL_VOCAB).parameter_count()
            return p, step_of.get(f"{settings['layers']}x{settings['hidden']}", 10.0)
        return measure

    # Step times read by this project's one-core bfloat16 probe at 10 minutes, the 2 x 384's
    # slowed step by step: it stays chosen while no rung is predicted better by more than the
    # margin, and gives way once one is.
    steps = {"1x256": 0.046183, "2x256": 0.104413, "2x384": 0.252482, "2x512": 0.582587}
    kept = gave_way = 0
    for slower in [1.05 ** k for k in range(30)]:
        chosen, found, _ = choose({}, 600, 1003855, at({**steps, "2x384": steps["2x384"] * slower}), clock=still)
        by = {o.name: o.predicted for o in found}
        low = min(by.values())
        if by["2x384"] < low + auto.SWITCH_MARGIN:
            assert chosen.name == "2x384"
            kept += 1
        else:
            assert chosen.predicted == low and chosen.name != "2x384"
            gave_way += 1
    assert kept and gave_way


def test_a_faster_machine_or_a_longer_budget_never_gets_a_smaller_model():
    for budget in (60, 120, 300, 600):
        sizes = [choose({}, budget, 1e6, machine(s), clock=still)[0].params for s in (3e9, 3e10, 1e11, 3e11, 3e12, 3e13)]
        assert sizes == sorted(sizes), (budget, sizes)
    for speed in (3e10, 1e11, 3e11):
        sizes = [choose({}, b, 1e6, machine(speed), clock=still)[0].params for b in (60, 120, 300, 600, 1800)]
        assert sizes == sorted(sizes), (speed, sizes)
    # The two ends of the ladder are reachable.
    assert choose({}, 10, 1e6, machine(1e8), clock=still)[0].name == LADDER[0].name
    assert choose({}, 3600, 1e6, machine(1e15), clock=still)[0].name == LADDER[-1].name


def test_the_probe_stops_at_two_worse_candidates_and_at_memory():
    calls = []
    chosen, found, _ = choose({}, 60, 1e6, machine(3e10, calls), clock=still)
    assert len(calls) == len(found) < len(LADDER)
    assert found[-1].predicted > chosen.predicted and found[-2].predicted > chosen.predicted
    calls = []
    limit = ModelConfig(model="lstm", layers=2, hidden=512, embed=64, vocab_size=auto.NOMINAL_VOCAB).parameter_count()
    chosen, found, _ = choose({}, 3600, 1e6, machine(1e15, calls, too_big_from=limit), clock=still)
    assert [o.name for o in found] == ["1x256", "2x256", "2x384"] and chosen.name == "2x384"
    with pytest.raises(charnn.CharnnError, match="not even its smallest model fits"):
        choose({}, 60, 1e6, machine(1e9, too_big_from=1), clock=still)


def test_the_probe_stops_when_it_has_used_its_share_of_the_budget():
    t, fast = [0.0], machine(1e13)

    def measure(settings):
        t[0] += 2.0  # every candidate takes 2 s: a 60 s budget allows 3 s of probing
        return fast(settings)

    _, found, seconds = choose({}, 60, 1e6, measure, clock=lambda: t[0])
    assert len(found) == 2 and seconds == pytest.approx(4.0)


def test_given_settings_win_over_the_ladder():
    shapes = options({"hidden": 128, "dropout": 0.3})
    assert {s["hidden"] for _, s in shapes} == {128} and all(s["dropout"] == 0.3 for _, s in shapes)
    assert len(shapes) < len(LADDER)  # the rungs that only differed in width are one now
    chosen, _, _ = choose({"dropout": 0.3}, 1800, 1e5, machine(3e11), clock=still)
    assert chosen.settings["dropout"] == 0.3  # regularisation would have set its own
    chosen, _, _ = choose({}, 1800, 1e5, machine(3e11), clock=still)
    assert chosen.settings["dropout"] > 0 and chosen.settings["weight_decay"] == 0.1  # many passes over 100 K


@pytest.fixture
def corpus(corpus_file, tmp_path):
    """Long enough for the ladder's batches (32 x 128)."""
    path = tmp_path / "long.txt"
    path.write_text(corpus_file.read_text() * 20)
    return path


def fake_probe(flops_per_s, calls=None):
    return lambda *a, **k: machine(flops_per_s, calls)


def test_an_auto_run_records_the_choice_and_resumes_with_it(monkeypatch, corpus, tmp_path):
    monkeypatch.setattr(auto, "probe", fake_probe(2e9))
    out = tmp_path / "r"
    stop_at = 3
    s = charnn.train(corpus=[str(corpus)], out=str(out), preset="auto", max_time=30, eval_every=0, sample_chars=0,
                     progress=False, should_stop=lambda step: step >= stop_at)
    assert s.stop_reason == "interrupted"
    config = json.loads((out / "config.json").read_text())
    rec = config["train"]["auto"]
    assert config["train"]["preset"] == "auto" and rec["chosen"] == "1x256"
    assert [c["name"] for c in rec["candidates"]][:1] == ["1x256"] and rec["probe_seconds"] >= 0
    chosen = rec["settings"]
    assert (config["model"]["layers"], config["model"]["hidden"]) == (chosen["layers"], chosen["hidden"])
    assert (config["train"]["batch_size"], config["train"]["lr"]) == (chosen["batch_size"], chosen["lr"])
    assert config["model"]["dropout"] == chosen["dropout"]

    def no_probe(*a, **k):
        raise AssertionError("a resumed run probes again")

    monkeypatch.setattr(auto, "probe", no_probe)
    s2 = charnn.train(resume=str(out), progress=False)
    assert s2.step > stop_at
    again = json.loads((out / "config.json").read_text())
    assert again["model"] == config["model"] and again["train"]["auto"] == rec


def test_the_probe_counts_in_the_budget(monkeypatch, corpus, tmp_path):
    # The probe "took" 1.5 s: the run's clock starts there (two steps take far less).
    monkeypatch.setattr(auto, "choose", lambda *a, **k: (lambda c, f, s: (c, f, 1.5))(*_real_choose(*a, **k)))
    monkeypatch.setattr(auto, "probe", fake_probe(2e9))
    s = charnn.train(corpus=[str(corpus)], out=str(tmp_path / "r"), preset="auto", max_time=30, eval_every=0,
                     sample_chars=0, progress=False, should_stop=lambda step: step >= 2)
    assert s.step == 2 and s.wall_time >= 1.5
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["auto"]["probe_seconds"] == 1.5


_real_choose = auto.choose


def test_auto_is_the_default_of_a_time_budget_and_flags_given_with_it_still_win(corpus, tmp_path):
    base = {"corpus": [str(corpus)], "out": str(tmp_path / "r")}
    assert resolve(base)[1].preset == "auto" and resolve({**base, "max_time": 60})[1].preset == "auto"
    assert resolve({**base, "max_time": 60, "dtype": "float32", "dropout": 0.2})[1].preset == "auto"
    # A model or batch flag, a step or epoch limit, a parent run or documents: the flags' model.
    for other in ({"hidden": 512}, {"layers": 1}, {"model": "gru"}, {"batch_size": 64}, {"seq_len": 128},
                  {"batching": "windows"}, {"reset_prob": 0.0}, {"max_steps": 100}, {"epochs": 1},
                  {"documents": "lines"}, {"preset": "cpu-2min"}):
        model, cfg = resolve({**base, **other})
        assert cfg.preset == other.get("preset", ""), other
    model, cfg = resolve({**base, "preset": "auto", "max_time": 60, "lr": 1e-3})
    assert cfg.preset == "auto" and cfg.lr == 1e-3


def test_the_record_is_not_a_setting(corpus, tmp_path):
    with pytest.raises(charnn.CharnnError, match="record --preset auto writes"):
        resolve({"corpus": [str(corpus)], "out": str(tmp_path / "r"), "auto": {"chosen": "2x384"}})


def test_explicit_auto_with_flags_chooses_around_them(monkeypatch, corpus, tmp_path):
    given = {"corpus": [str(corpus)], "out": str(tmp_path / "r"), "preset": "auto", "max_time": 600,
             "hidden": 96, "dropout": 0.1}
    model, cfg = resolve(given)
    calls = []
    model, cfg = auto.settle(model, cfg, given, Dist(), measure=machine(3e11, calls))
    assert model.hidden == 96 and model.dropout == 0.1 and cfg.auto["settings"]["hidden"] == 96
    assert calls and all(c // 10 == 96 for c in calls)


def test_auto_needs_a_time_budget_and_running_text(capsys, corpus, tmp_path):
    for extra, pattern in ((["--max-steps", "5"], "time budget"), (["--documents", "lines"], "running text")):
        code = main(["train", str(corpus), "--out", str(tmp_path / "x"), "--preset", "auto", *extra])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "--preset auto" in err and pattern in err, err


def test_the_real_probe_times_a_candidate_and_the_cli_says_what_it_chose(capsys, corpus, tmp_path):
    model, cfg = resolve({"corpus": [str(corpus)], "out": str(tmp_path / "p"), "max_time": 60})
    params, seconds = auto.probe(model, cfg, __import__("torch").device("cpu"), 1)(options({})[0][1])
    assert params == ModelConfig(model="lstm", layers=1, hidden=256, embed=64,
                                 vocab_size=auto.NOMINAL_VOCAB).parameter_count()
    assert 0 < seconds < 5
    code = main(["train", str(corpus), "--out", str(tmp_path / "c"), "--preset", "auto", "--max-time", "2",
                 "--sample-chars", "0"])
    err = capsys.readouterr().err
    assert code == 0 and "preset auto: " in err and "probe" in err
    assert json.loads((tmp_path / "c" / "config.json").read_text())["train"]["auto"]["chosen"]


def test_regularisation_grows_with_passes_and_size():
    from charnn.train.auto import regularisation

    assert regularisation(2.5, 3_300_000) == {"dropout": 0.0, "weight_decay": 0.0}  # a few passes: none
    assert regularisation(7.4, 3_300_000) == {"dropout": 0.35, "weight_decay": 0.1}  # 2 x 512, 7 passes: tuned 0.35
    assert regularisation(100, 7_300_000)["dropout"] == 0.5  # the cap
    small, large = regularisation(7, 350_000)["dropout"], regularisation(7, 1_900_000)["dropout"]
    assert 0 < small < large < 0.35


def test_a_rung_as_run_is_predicted_by_its_curve_and_anything_else_by_the_law():
    rung = LADDER[auto.KEEP]
    o = auto.evaluate_option(rung.name, rung.settings(), 1903554, 0.2, 600, 1e6, {})
    assert o.predicted == pytest.approx(auto.CURVES[rung.name].loss(o.chars))
    other = {**rung.settings(), "lr": 1e-3}  # a flag given: not the rung the curve was fitted to
    o = auto.evaluate_option(rung.name, other, 1903554, 0.2, 600, 1e6, {"lr": 1e-3})
    assert o.predicted == pytest.approx(auto.LAW.loss(1903554, o.chars))
    # Far beyond the characters the curve's runs saw: the law.
    o = auto.evaluate_option(rung.name, rung.settings(), 1903554, 0.001, 3600, 1e6, {})
    assert o.chars > auto.CURVE_REACH * auto.CURVES[rung.name].seen
    assert o.predicted == pytest.approx(auto.LAW.loss(1903554, o.chars))
    # Too few steps for a whole warmup and cosine: never chosen.
    assert auto.evaluate_option(rung.name, rung.settings(), 1903554, 10.0, 600, 1e6, {}).predicted == float("inf")


def test_a_rung_disturbed_while_timed_is_timed_again():
    fast, seen = machine(3e11), []

    def disturbed(settings):  # the 2 x 384's first timing is four times too slow, as under another process
        p, step = fast(settings)
        seen.append(f"{settings['layers']}x{settings['hidden']}")
        return p, step * 4 if seen.count("2x384") == 1 and seen[-1] == "2x384" else step

    chosen, found, _ = choose({}, 150, 1e6, disturbed, clock=still)
    clean, found_clean, _ = choose({}, 150, 1e6, machine(3e11), clock=still)
    assert seen.count("2x384") == 2  # timed again once the 2 x 512 read faster per character
    assert [o.step_seconds for o in found] == [o.step_seconds for o in found_clean] and chosen == clean


def test_the_evaluations_of_a_run_are_paid_for_in_its_characters():
    rung = LADDER[auto.KEEP]
    quiet = auto.evaluate_option(rung.name, rung.settings(), 1903554, 0.15, 150, 1e6, {})
    evals = auto.evaluate_option(rung.name, rung.settings(), 1903554, 0.15, 150, 1e6, {}, eval_every=100)
    # An evaluation reads the validation split (1e6 / 9 characters) at about a training step's
    # cost per character: 36 steps' worth every 100 steps leaves 100/136 of the steps.
    an_eval = 1e6 / 9 / 3072 * 0.15
    assert evals.chars / quiet.chars == pytest.approx(0.15 / (0.15 + an_eval / 100))
    assert evals.chars < quiet.chars * 0.75
