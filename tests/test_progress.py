import io

from charnn.progress import Progress, format_duration


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_terminal_bar_redraws_in_place_with_eta():
    s = FakeTTY()
    p = Progress(stream=s)
    p.update(0.5, "train", "loss 1.234 9,000 chars/s", force=True)
    p.message("step 10: val loss 1.5")
    p.close()
    out = s.getvalue()
    assert out.startswith("\rtrain [############------------]  50%")
    assert "<" in out and "loss 1.234 9,000 chars/s" in out
    assert "\nstep 10: val loss 1.5\n" in out


def test_plain_lines_when_not_a_terminal():
    s = io.StringIO()
    p = Progress(stream=s, every=0)
    p.update(0.25, "train", "loss 2.0")
    p.update(0.5, "train", "loss 1.5")
    lines = s.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in s.getvalue()
    assert lines[1].startswith("train  50% elapsed") and "eta" in lines[1] and lines[1].endswith("loss 1.5")


def test_format_duration():
    assert format_duration(59) == "00:59" and format_duration(3725) == "1:02:05"
