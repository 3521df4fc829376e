"""Natural-prose text sets fetched at run time (see :mod:`.austen`); the KJV lives in :mod:`mixkern.corpus`."""

PROSE = ("austen", "kjv")


def prose(name: str, split: str) -> str:
    """Held-out natural prose for real-tokenizer models: ``austen`` (:mod:`.austen`; splits
    ``calib`` = Sense and Sensibility, ``test`` = the other five novels) or ``kjv``
    (:mod:`mixkern.corpus`; ``calib``/``test`` chapters)."""
    if name == "austen":
        from . import austen
        return austen.text(split)
    if name == "kjv":
        from .. import corpus
        return corpus.text(split)
    raise ValueError(f"text must be one of {PROSE}, got {name!r}")
