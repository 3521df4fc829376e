"""mixkern's half of the warm start: each kernel's TileLang IR, kept on disk as TVM JSON.

TileLang's own disk cache keeps the compiled binaries, keyed by the IR's text -- so even a
cache hit first rebuilds the IR through TileLang's Python frontend, which measured 0.2-0.5 s
per kernel on the H100 machine (the frontend re-parses every macro): 22 kernels put ~5 s
before a model's first token.  Loading the IR back from TVM's JSON takes ~0.03 s.

Entries are keyed by the kernel job (kind, arch, K, schedule, dtype, ...), the TileLang
version and a hash of mixkern's kernel sources, so any change to the generated code lands
under a new key; an entry is written atomically once its kernel has compiled, so its
presence also tells :mod:`mixkern.warmup` the binary is in TileLang's cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache

import tilelang
from tilelang import tvm
from tvm.runtime import _ffi_node_api


def cache_root() -> str:
    """Beside TileLang's cache (``TILELANG_CACHE_DIR``, default ``~/.tilelang/cache``)."""
    root = os.environ.get("TILELANG_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".tilelang", "cache")
    return os.path.join(root, "mixkern", f"tilelang-{tilelang.__version__}-{_source_hash()}")


@lru_cache(maxsize=None)
def _source_hash() -> str:
    """Hash of the kernel sources: a change to any of them moves every entry."""
    here = os.path.dirname(__file__)
    h = hashlib.sha256()
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            with open(os.path.join(here, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()[:16]


def entry_path(job: tuple) -> str:
    return os.path.join(cache_root(), hashlib.sha256(repr(job).encode()).hexdigest()[:32] + ".json")


def load(job: tuple):
    """The job's PrimFunc from disk, or None.  Read with TVM's node loader directly:
    ``tvm.ir.load_json`` first re-encodes the whole JSON to upgrade older TVM versions
    (~50 ms a kernel on the H100 machine), needless since the key holds TileLang's version."""
    try:
        with open(entry_path(job)) as f:
            return _ffi_node_api.LoadJSON(f.read())
    except (OSError, ValueError, tvm.error.TVMError):
        return None


def store(job: tuple, func) -> None:
    """Write the job's PrimFunc atomically (concurrent writers race harmlessly)."""
    path = entry_path(job)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(tvm.ir.save_json(func))
    os.replace(tmp, path)
