"""Progress on stderr for every long loop: a redrawn bar on a terminal, plain lines elsewhere.

Built on tqdm.  tqdm itself redraws with carriage returns even when stderr is a pipe or a
log file, which shows up as one ever-growing line (or, read line by line, as silence), so
away from a terminal :class:`_LogLines` overrides ``display`` (tqdm's documented extension
point) to print one self-contained line every ``interval`` seconds and one at the end.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

LOG_INTERVAL = 5.0  # seconds between lines when stderr is not a terminal
_KNOWN = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%), {elapsed} elapsed, ~{remaining} left, {rate_fmt}{postfix}"
_UNKNOWN = "{desc}: {n_fmt} done, {elapsed} elapsed, {rate_fmt}{postfix}"


class _LogLines(tqdm):
    """tqdm that appends a line per refresh instead of redrawing one (for pipes and logs)."""

    monitor_interval = 0  # no background monitor thread: refreshes happen between items

    def display(self, msg=None, pos=None):
        line = str(self)
        if msg is not None or line == getattr(self, "_last_line", None):  # clearing, or nothing new
            return False
        self.fp.write(line + "\n")
        self.fp.flush()
        self._last_line = line
        return True

    def close(self):
        if not self.disable:
            self.display()  # the closing line (final count and time) unless just printed
            self.leave = False  # tqdm would otherwise redraw it and add a newline
        super().close()


def _terminal_columns(stream) -> int:
    """Width of the terminal ``stream`` writes to; 0 when it is no terminal or reports no width
    (some CI pseudo-terminals: tqdm would draw an empty bar there)."""
    if not getattr(stream, "isatty", lambda: False)():
        return 0
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 80  # a terminal-like stream without a file descriptor (tests)


def progress(items, desc: str, total: int | None = None, *, stream=None,
             interval: float = LOG_INTERVAL, clock=None) -> tqdm:
    """Iterate ``items`` showing progress on ``stream`` (stderr): a bar on a terminal, else a
    line at the start, every ``interval`` seconds and at the end.

    Returns the tqdm object, so a loop can add a status (``bar.set_postfix_str("loss 2.1")``).
    ``clock`` (seconds, monotonic) replaces tqdm's timer, for tests.
    """
    stream = sys.stderr if stream is None else stream
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    if _terminal_columns(stream):
        bar = tqdm(items, desc, total=total, file=stream, dynamic_ncols=True)
    else:
        bar = _LogLines(items, desc, total=total, file=stream, mininterval=interval, miniters=1,
                        bar_format=_UNKNOWN if total is None else _KNOWN)
    if clock is not None:  # as tqdm's own tests do: swap the timer and restart the counters
        bar._time = clock
        bar.start_t = bar.last_print_t = clock()
    return bar
