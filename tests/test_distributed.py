"""Several processes: torchrun with gloo on 127.0.0.1 trains one model as one process would.

The torchrun tests start real processes (an agent and two workers, each importing torch),
so they are marked slow; the unit tests at the top check the agreement rules in-process.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import charnn
from charnn import checkpoint
from charnn.cli import main
from charnn.errors import CharnnError
from charnn.train.config import resolve
from charnn.train.distributed import Dist, ReportedByRankZero, from_env
from charnn.train.loop import Trainer
from conftest import TINY_MODEL, TINY_TEXT, TINY_TRAIN
from test_train import assert_identical

DRIVER = Path(__file__).with_name("ddp_driver.py")
# torchrun, two workers on this machine; the rendezvous picks a free port on 127.0.0.1.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"]
STEPS = 40


def flags(corpus, out, steps=STEPS):
    return [str(corpus), "--out", str(out), "--max-steps", str(steps), "--model", "lstm",
            "--hidden", "16", "--embed", "8", "--layers", "1", "--batch-size", "4", "--seq-len", "16",
            "--eval-every", "10", "--log-every", "5", "--sample-chars", "0", "--dtype", "float32",
            "--quiet"]


def torchrun(*args, timeout=240):
    p = subprocess.run([*TORCHRUN, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return p


def drive(tmp, watch, **spec):
    """Run ddp_driver.py under torchrun; the two ranks' reports."""
    results = Path(tmp)
    results.mkdir(parents=True, exist_ok=True)
    p = torchrun(DRIVER, json.dumps({"results": str(results), "watch": str(watch), **spec}))
    assert p.returncode == 0, p.stdout + p.stderr
    return p, [json.loads((results / f"rank{r}.json").read_text()) for r in range(2)]


# --- unit tests: no process group ---------------------------------------------------------------
def test_from_env_reads_torchrun_variables():
    assert from_env({}) == Dist()
    assert from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Dist(3, 4, 1)
    with pytest.raises(CharnnError, match="RANK=4 is outside WORLD_SIZE=4"):
        from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(CharnnError, match="not integers; launch with torchrun"):
        from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_single_process_dist_is_transparent():
    d = Dist()
    assert not d.enabled and d.is_main and d.device("cpu") == "cpu"
    t = torch.arange(6.0).reshape(1, 2, 3)
    assert d.gather_cat(t, 1) is t and d.mean(t) is t
    assert d.strongest("time", ("", "time")) == "time" and d.broadcast_float(None) is None
    with pytest.raises(CharnnError, match="boom"):
        d.agree(lambda: (_ for _ in ()).throw(CharnnError("boom")))


def test_devices_of_several_processes():
    d = Dist(1, 2, 1)
    with pytest.raises(CharnnError, match=r"--device cuda:1 names one GPU.*pass --device cuda"):
        d.device("cuda:1")
    with pytest.raises(CharnnError, match="cpu \\(gloo\\) or cuda \\(NCCL\\) only"):
        d.device("mps")
    assert d.device("cpu") == "cpu"


def test_an_error_on_one_rank_is_raised_on_all_and_printed_once(monkeypatch, capsys, tmp_path):
    # What every rank learns from the gather: rank 1 failed.
    monkeypatch.setattr(Dist, "_all_gather_text", lambda self, text: [None, "corpus path x does not exist"])
    with pytest.raises(CharnnError, match="^on rank 1: corpus path x does not exist$") as e:
        Dist(0, 2).agree(lambda: 1)
    assert type(e.value) is CharnnError
    with pytest.raises(ReportedByRankZero):
        Dist(1, 2).agree(lambda: 1)

    def rank_one(args):
        raise ReportedByRankZero("printed by rank 0")

    monkeypatch.setattr("charnn.cli.training._cmd_prepare", rank_one)
    assert main(["prepare", "--out", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err == ""


def test_batch_size_is_global_and_must_split_over_the_ranks(corpus_file, tmp_path):
    model_config, cfg = resolve({"corpus": [str(corpus_file)], "out": str(tmp_path / "r"),
                                 **TINY_MODEL, **TINY_TRAIN, "max_steps": 5})
    # Trainer() makes no collective call, so a fake 3-process Dist is enough here.
    with pytest.raises(CharnnError, match="--batch-size 4 is the global batch.*3 processes; use a multiple of 3"):
        Trainer(model_config, cfg, progress=False, dist=Dist(0, 3))
    t = Trainer(model_config, cfg, progress=False, dist=Dist(1, 2))
    assert t.batches.batch_size == 2 and t.batches.starts.tolist() == [2 * t.batches.column_len, 3 * t.batches.column_len]
    assert not (tmp_path / "r").exists()  # rank 1 never creates the run directory


def test_ranks_draw_their_rows_of_the_global_state_resets():
    import numpy as np

    from charnn.data.batching import StreamBatches

    data = np.arange(4000, dtype=np.uint8)
    whole = StreamBatches(data, batch_size=8, seq_len=10, reset_prob=0.5, seed=3)
    parts = [StreamBatches(data, batch_size=4, seq_len=10, rank=r, world_size=2, reset_prob=0.5, seed=3)
             for r in range(2)]
    for _ in range(20):
        w, p = whole.next(), [p.next() for p in parts]
        assert torch.equal(torch.cat([q.x for q in p]), w.x)
        if w.fresh is not None:
            assert torch.equal(torch.cat([q.fresh for q in p]), w.fresh)


def test_ranks_of_the_windows_layout_split_each_global_batch():
    import numpy as np

    from charnn.data.batching import WindowBatches

    data = np.arange(2000, dtype=np.uint16)
    whole = WindowBatches(data, batch_size=6, seq_len=10, seed=5)
    parts = [WindowBatches(data, batch_size=3, seq_len=10, seed=5, rank=r, world_size=2) for r in range(2)]
    assert parts[0].steps_per_epoch == whole.steps_per_epoch
    for _ in range(2 * whole.steps_per_epoch + 1):  # across epoch boundaries
        assert torch.equal(torch.cat([p.next().x for p in parts]), whole.next().x)


# --- torchrun ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A 2-process run of STEPS steps through the CLI, with every rank's writes recorded."""
    root = tmp_path_factory.mktemp("ddp")
    corpus = root / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    run = root / "straight"
    p, ranks = drive(root / "straight-report", run, argv=["train", *flags(corpus, run)])
    return {"root": root, "corpus": corpus, "run": run, "stdout": p.stdout, "ranks": ranks}


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(straight, tmp_path):
    """Two ranks of batch 2 and one process of batch 4 read the same 4 stream columns and
    take the same steps; the loss curves agree to float rounding, not bit for bit.

    The mathematics is identical: DDP averages the two ranks' gradients of their mean
    losses, which is the gradient of the mean over all 4 rows. Only the order of float
    additions differs (each rank sums 2 rows, then the all-reduce adds the two halves;
    one process sums 4 rows in one matrix product), a difference of ~1e-7 per step that
    the training dynamics carry forward without growing much over a short run.
    """
    assert all(r["exit"] == 0 for r in straight["ranks"])
    assert straight["stdout"].count(f"run {straight['run']}: {STEPS} steps (steps)") == 1  # rank 0 speaks
    one = tmp_path / "one"
    charnn.train(corpus=[str(straight["corpus"])], out=str(one), max_steps=STEPS, dtype="float32",
                 **TINY_MODEL, **TINY_TRAIN, progress=False)
    m1, m2 = checkpoint.read_metrics(one), checkpoint.read_metrics(straight["run"])
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == list(range(5, STEPS + 1, 5))
    for a, b in zip(m1, m2):
        assert a["lr"] == b["lr"] and a["epoch"] == b["epoch"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        if "val_loss" in a:
            assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)
    w1, w2 = checkpoint.load_checkpoint(one).model, checkpoint.load_checkpoint(straight["run"]).model
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-5)
    # The saved hidden state holds all 4 rows, as one process's would.
    s1, s2 = checkpoint.load_checkpoint(one).extra, checkpoint.load_checkpoint(straight["run"]).extra
    assert s2["state.0"].shape == s1["state.0"].shape == (1, 4, 16)
    torch.testing.assert_close(s2["state.0"], s1["state.0"], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_only_rank_zero_writes(straight):
    rank0, rank1 = straight["ranks"]
    # The hook works (rank 0 wrote the run), and rank 1 wrote nothing in the run directory.
    assert any("last.safetensors" in w for w in rank0["writes"]) and any("metrics.jsonl" in w for w in rank0["writes"])
    assert rank1["writes"] == []
    names = sorted(p.name for p in straight["run"].iterdir())
    assert names == sorted(["config.json", "vocab.json", "model.safetensors", "last.safetensors",
                            "metrics.jsonl", "loss.png"])
    ck = checkpoint.load_checkpoint(straight["run"])
    assert ck.trainer["world_size"] == 2 and {"rng.torch", "rng.torch.1"} <= set(ck.extra)


@pytest.mark.slow
def test_distributed_run_stops_together_and_resumes_bit_identically(straight):
    """should_stop fires on rank 1 only: both ranks stop at that step; the resumed run
    (torchrun -m charnn train --resume) ends bit-identical to the uninterrupted one."""
    run = straight["root"] / "resumed"
    settings = {"corpus": [str(straight["corpus"])], "out": str(run), "max_steps": STEPS,
                "dtype": "float32", **TINY_MODEL, **TINY_TRAIN}
    _, ranks = drive(straight["root"] / "stop-report", run, settings=settings, stop={"rank": 1, "step": 17})
    for r in ranks:
        assert r["summary"]["stop_reason"] == "interrupted" and r["summary"]["step"] == 17
    assert checkpoint.load_checkpoint(run).trainer["step"] == 17
    p = torchrun("-m", "charnn", "train", "--resume", run, "--quiet")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count(f"run {run}: {STEPS} steps (steps)") == 1
    assert_identical(straight["run"], run)


@pytest.mark.slow
def test_a_write_error_on_rank_zero_stops_every_rank(straight, tmp_path):
    """Rank 0's disk fills at step 25: both ranks stop there with the one line (rank 0 says
    it), no rank hangs in a collective, and the resume point of step 20 resumes exactly."""
    run = tmp_path / "full"
    settings = {"corpus": [str(straight["corpus"])], "out": str(run), "max_steps": STEPS, "save_every": 10,
                "dtype": "float32", **TINY_MODEL, **TINY_TRAIN}
    _, ranks = drive(tmp_path / "report", run, settings=settings, full_disk={"step": 25})
    assert [r["error"][0] for r in ranks] == ["CharnnError", "ReportedByRankZero"]
    assert ranks[0]["error"][1] == ranks[1]["error"][1] == (
        f"cannot write {run / 'metrics.jsonl'}: No space left on device; training stopped at step 25; the "
        f"resume point of step 20 is intact: once that is fixed, continue with charnn train --resume {run}")
    assert checkpoint.load_checkpoint(run).trainer["step"] == 20
    p = torchrun("-m", "charnn", "train", "--resume", run, "--quiet")
    assert p.returncode == 0, p.stdout + p.stderr
    # The straight run saved only at its end; the checkpoints written on the way change nothing.
    assert_identical(straight["run"], run)


@pytest.mark.slow
def test_time_budget_and_sigint_stop_all_ranks_together(straight, tmp_path):
    """A time budget (rank 0's step time decides the schedule for all) and a SIGINT to
    torchrun (forwarded to every worker) stop both ranks at one step with a resume point."""
    run = tmp_path / "sig"
    cmd = [*TORCHRUN, "-m", "charnn", "train", *flags(straight["corpus"], run, steps=0)]
    cmd[cmd.index("--max-steps"):cmd.index("--max-steps") + 2] = ["--max-time", "120"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 6) and time.time() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=90)
    assert "resume with: charnn train --resume" in err and err.count("resume with") == 1, out + err
    ck = checkpoint.load_checkpoint(run)
    t = ck.trainer
    assert t["stop_reason"] == "interrupted" and not t["finished"]
    assert t["step"] >= 30 and t["total_steps"] > t["step"]  # calibrated: broadcast after step 20
    assert ck.extra["state.0"].shape == (1, 4, 16)


@pytest.mark.slow
def test_a_distributed_run_resumes_in_one_process(straight, tmp_path, capsys):
    """Another number of processes: the global batch, data position and all 4 rows of the
    hidden state carry over; only the random streams restart (and it says so)."""
    import shutil

    run = tmp_path / "moved"
    shutil.copytree(straight["run"], run)
    s = charnn.train(resume=str(run), max_steps=STEPS + 10, progress=True)
    assert s.step == STEPS + 10 and s.stop_reason == "steps"
    assert "saved by 2 process(es) with 1" in capsys.readouterr().err
    import numpy as np

    from charnn.data.batching import StreamBatches

    one = StreamBatches(np.zeros(int(len(TINY_TEXT) * 0.9)), batch_size=4, seq_len=16)
    for _ in range(STEPS + 10):
        one.next()
    t = checkpoint.load_checkpoint(run).trainer
    assert t["world_size"] == 1 and t["batches"] == one.state_dict()  # one process's position


def test_preset_auto_under_torchrun_probes_once_and_every_rank_takes_its_choice(straight, tmp_path):
    """Rank 0 times the ladder (here the tiny shapes given, at each rung's learning rate) and
    broadcasts its choice: one line says it, both ranks train that model, config.json holds it."""
    run = tmp_path / "auto"
    cmd = flags(straight["corpus"], run, steps=0)
    cmd[cmd.index("--max-steps"):cmd.index("--max-steps") + 2] = ["--max-time", "6", "--preset", "auto"]
    cmd.remove("--quiet")
    p = torchrun("-m", "charnn", "train", *cmd)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stderr.count("preset auto: ") == 1, p.stderr
    config = json.loads((run / "config.json").read_text())
    rec = config["train"]["auto"]
    assert rec["settings"]["lr"] == config["train"]["lr"] and config["model"]["hidden"] == 16
    assert checkpoint.load_checkpoint(run).trainer["world_size"] == 2
