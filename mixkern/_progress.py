"""A dependency-free progress bar on stderr for long loops (quiet when stderr is not a terminal)."""

from __future__ import annotations

import sys
import time


def progress(items, desc: str, total: int | None = None, stream=None):
    stream = stream or sys.stderr
    total = len(items) if total is None else total
    live = stream.isatty()
    start = time.perf_counter()
    for i, item in enumerate(items, 1):
        yield item
        if live or i == total:
            width = 24
            done = int(width * i / max(total, 1))
            end = "\n" if i == total else ""
            stream.write(f"\r{desc} [{'#' * done}{'.' * (width - done)}] {i}/{total} "
                         f"{time.perf_counter() - start:.1f}s{end}")
            stream.flush()
