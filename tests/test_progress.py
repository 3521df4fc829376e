"""Progress output: plain lines every few seconds away from a terminal, a redrawn bar on one."""

import io
import os
import re
import select

from mixkern._progress import progress


class Clock:
    """Simulated seconds: each loop body advances it, nothing sleeps."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _lines(stream):
    text = stream.getvalue()
    assert "\r" not in text, "a log must not get carriage-return redraws"
    return text.splitlines()


def _elapsed(line):
    m = re.search(r"(\d+):(\d+) elapsed", line)
    return 60 * int(m[1]) + int(m[2])


def test_log_lines_start_at_once_recur_every_interval_and_close():
    clock, out = Clock(), io.StringIO()
    for _ in progress(range(60), "train", stream=out, interval=5.0, clock=clock):
        assert out.getvalue(), "the first line must appear before the first item finishes"
        clock.now += 0.5  # 30 simulated seconds in all
    lines = _lines(out)
    assert lines[0].startswith("train: 0/60 (0%)")
    assert lines[-1].startswith("train: 60/60 (100%)") and _elapsed(lines[-1]) == 30
    gaps = [b - a for a, b in zip(map(_elapsed, lines), map(_elapsed, lines[1:]))]
    assert len(lines) == 7 and all(g <= 5 for g in gaps), lines  # 0, 5, ..., 30 s


def test_slow_items_each_get_a_line_and_a_status():
    clock, out = Clock(), io.StringIO()
    bar = progress([1, 2, 3], "salience", stream=out, clock=clock)
    for i in bar:
        clock.now += 60.0  # one item longer than the interval: a line after each
        bar.set_postfix_str(f"loss {i}.5", refresh=False)
    lines = _lines(out)
    assert [ln.split(",")[0] for ln in lines] == ["salience: 0/3 (0%)", "salience: 1/3 (33%)",
                                                  "salience: 2/3 (67%)", "salience: 3/3 (100%)"]
    assert lines[-1].endswith("loss 3.5") and _elapsed(lines[-1]) == 180


def test_unknown_length_counts_items():
    clock, out = Clock(), io.StringIO()
    for _ in progress((i for i in range(4)), "compile", stream=out, clock=clock):
        clock.now += 10.0
    assert _lines(out)[-1].startswith("compile: 4 done, 00:40 elapsed")


def test_terminal_gets_a_redrawn_bar():
    out = Terminal()
    assert list(progress(range(5), "formats", stream=out)) == list(range(5))
    text = out.getvalue()
    assert "\r" in text and "formats" in text and "5/5" in text and text.endswith("\n")


def test_a_terminal_without_a_width_gets_lines():
    """A fresh pseudo-terminal reports 0 columns (as some CI runners do): tqdm would draw nothing."""
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as stream:
        assert stream.isatty() and os.get_terminal_size(slave).columns == 0
        list(progress(range(3), "compile", stream=stream, clock=Clock()))
    text = ""
    while text.count("\n") < 2 and select.select([master], [], [], 10)[0]:  # the kernel hands pty output on lazily
        text += os.read(master, 4096).decode()
    os.close(master)
    lines = text.replace("\r\n", "\n").splitlines()  # the terminal turns each \n into \r\n
    assert [ln.split(",")[0] for ln in lines] == ["compile: 0/3 (0%)", "compile: 3/3 (100%)"]
