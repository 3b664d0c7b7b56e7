"""Run by test_distributed.py under torchrun: charnn in every process, with two test hooks.

    torchrun ... tests/ddp_driver.py SPEC_JSON

SPEC is {"results": DIR, "watch": RUN_DIR, "argv": [charnn CLI arguments] or null,
"settings": {charnn.train keywords} or null, "stop": {"rank": r, "step": k} or null,
"full_disk": {"step": k} or null}.
- An audit hook (PEP 578) records every file this process opens for writing, creates,
  renames or removes under RUN_DIR, so a test can check that rank 0 alone writes.
- "stop" makes `should_stop` true at step k on rank r only, so a test can check that a
  stop one rank decides on stops every rank at the same step.
- "full_disk" makes rank 0's metrics append fail with ENOSPC from step k on, so a test can
  check that a write error of rank 0 stops every rank.
Each rank writes DIR/rank<R>.json with what it returned and what it wrote.
"""

import json
import os
import sys

spec = json.loads(sys.argv[1])
rank = int(os.environ["RANK"])
watch = os.path.realpath(spec["watch"])
writes: list[str] = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _under_watch(path) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)):
        return False
    p = os.path.realpath(os.fsdecode(path))
    return p == watch or p.startswith(watch + os.sep)


def audit(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
        if writing and _under_watch(path):
            writes.append(f"open {path}")
    elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate", "os.chmod"):
        if any(_under_watch(a) for a in args[:2]):
            writes.append(f"{event} {args[0]}")


sys.addaudithook(audit)

import charnn  # noqa: E402
from charnn import checkpoint  # noqa: E402
from charnn.cli import main  # noqa: E402
from charnn.errors import CharnnError  # noqa: E402

if spec.get("full_disk") and rank == 0:
    real_append = checkpoint.append_metrics

    def full_disk(run_dir, record):
        if record["step"] >= spec["full_disk"]["step"]:
            raise OSError(28, os.strerror(28))  # ENOSPC
        real_append(run_dir, record)

    checkpoint.append_metrics = full_disk

result: dict = {"rank": rank}
if spec.get("argv") is not None:
    result["exit"] = main(spec["argv"])
else:
    stop = spec.get("stop")
    should_stop = None
    if stop and stop["rank"] == rank:
        should_stop = lambda step: step == stop["step"]  # noqa: E731
    try:
        result["summary"] = charnn.train(**spec["settings"], should_stop=should_stop, progress=False).to_dict()
    except CharnnError as e:
        result["error"] = [type(e).__name__, str(e)]
result["writes"] = writes
with open(os.path.join(spec["results"], f"rank{rank}.json"), "w") as f:
    json.dump(result, f)
# Leave without the interpreter's teardown: about one run in five on a loaded 2-core machine, a
# gloo thread still joinable when the process exits aborts it ("terminate called without an
# active exception", SIGABRT) after all the work is done and reported; the same happens on the
# commit before this session's changes. The results above are what the tests check.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
