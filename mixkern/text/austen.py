"""Jane Austen's six novels from Debian's ``r-cran-janeaustenr`` (1.0.0), fetched at run time.

The package keeps the novels as character vectors (one element per printed line) in an R
lazy-load database (``data/Rdata.rdx`` + ``Rdata.rdb``), read here by :mod:`.rdata`; no R
needed.  ``fetch`` runs ``apt-get download r-cran-janeaustenr`` into the user cache (or uses
a ``.deb`` already there), extracts the two database files in Python (ar + tar.xz) and
checks them against the pinned sha256, so every run evaluates on the same text.  Nothing
of the text is part of mixkern.

Splits (whole novels, so calibration never sees an evaluation sentence): *Sense and
Sensibility* calibrates; the other five novels are the held-out evaluation text.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

from .rdata import read_lazyload_db

DEB_PACKAGE = "r-cran-janeaustenr"
DB_SHA256 = {  # the files of r-cran-janeaustenr 1.0.0-1 that hold the novels
    "Rdata.rdx": "cab8cbe4ce965d3b42b35c03383bafccc0eb78151f70e4748ead45270470c22f",
    "Rdata.rdb": "8fb5198960d0da724b1562f96e4221e5c1b41ff455000280b02c55980c3d8f21",
}
CALIB_NOVELS = ("sensesensibility",)
TEST_NOVELS = ("prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
SPLITS = {"calib": CALIB_NOVELS, "test": TEST_NOVELS}


class TextUnavailable(FileNotFoundError):
    """The text could not be fetched; the message says how to provide it."""


def _deb_members(deb: bytes) -> dict[str, bytes]:
    """The members of a Debian package (an ar archive)."""
    if not deb.startswith(b"!<arch>\n"):
        raise ValueError("not a Debian package (no ar header)")
    pos, out = 8, {}
    while pos + 60 <= len(deb):
        name, size = deb[pos:pos + 16].decode().strip().rstrip("/"), int(deb[pos + 48:pos + 58])
        out[name] = deb[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    return out


def _extract_db(deb_path: Path, dest: Path) -> None:
    members = _deb_members(deb_path.read_bytes())
    data = next((v for k, v in members.items() if k.startswith("data.tar")), None)
    if data is None:
        raise ValueError(f"{deb_path}: no data.tar member")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for name in DB_SHA256:
            member = tar.extractfile(f"./usr/lib/R/site-library/janeaustenr/data/{name}")
            (dest / name).write_bytes(member.read())


def _download_deb(dest: Path) -> Path:
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        try:
            done = subprocess.run(["apt-get", "download", DEB_PACKAGE], cwd=tmp, capture_output=True, text=True)
        except FileNotFoundError:
            done = None
        debs = list(Path(tmp).glob("*.deb"))
        if done is None or done.returncode or not debs:
            said = "apt-get not found" if done is None else (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise TextUnavailable(f"Jane Austen's novels come from Debian's {DEB_PACKAGE} and `apt-get download "
                                  f"{DEB_PACKAGE}` failed ({said}); put its .deb into {dest} and run again")
        target = dest / debs[0].name
        debs[0].replace(target)
        return target


def _verified(directory: Path) -> bool:
    return all((directory / n).exists() and hashlib.sha256((directory / n).read_bytes()).hexdigest() == h
               for n, h in DB_SHA256.items())


def fetch(directory: str | Path | None = None) -> Path:
    """Directory holding the verified ``Rdata.rdx``/``Rdata.rdb`` (downloaded on first use)."""
    from ..models.fetch import cache_dir
    root = Path(directory) if directory is not None else cache_dir() / "janeaustenr"
    root.mkdir(parents=True, exist_ok=True)
    if _verified(root):
        return root
    deb = next(iter(sorted(root.glob(f"{DEB_PACKAGE}_*.deb"))), None) or _download_deb(root)
    _extract_db(deb, root)
    if not _verified(root):
        raise ValueError(f"{deb.name} holds a different janeaustenr text than the pinned 1.0.0 one: "
                         f"results would not compare; remove it from {root}")
    return root


def paragraphs(lines: list) -> list[str]:
    """Printed lines -> paragraphs (the line wrapping of the print edition undone)."""
    out, current = [], []
    for line in lines + [""]:
        if line and line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(current))
            current = []
    return out


@lru_cache(maxsize=None)
def novels(directory: str | None = None) -> dict[str, str]:
    """{novel: text}, paragraphs separated by blank lines."""
    root = fetch(directory)
    db = read_lazyload_db(str(root / "Rdata.rdx"), str(root / "Rdata.rdb"))
    return {name: "\n\n".join(paragraphs(lines)) + "\n" for name, lines in db.items()}


def text(split: str, directory: str | None = None) -> str:
    """The ``calib`` or ``test`` split as one string (novels in a fixed order)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    books = novels(directory)
    return "\n\n".join(books[name] for name in SPLITS[split])
