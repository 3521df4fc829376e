"""A small reader for R's serialization format (XDR, versions 2 and 3), enough for data.

R packages store their data sets as a lazy-load database: ``Rdata.rdx`` (a gzip-compressed
serialized index ``list(variables = list(name = c(offset, length)), ...)``) and
``Rdata.rdb`` (the objects, each a 4-byte big-endian length and a zlib stream of one
serialized object).  This reader decodes the value types data sets use: NULL, logical,
integer, double and character vectors, generic vectors (lists), pairlists and symbols, with
attributes; a vector with a ``names`` attribute becomes a ``dict``.  Anything else (closures,
environments, ALTREP) raises ValueError, so a changed package fails loudly.
"""

from __future__ import annotations

import gzip
import struct
import zlib

NILVALUE, SYMSXP, LISTSXP, CHARSXP = 254, 1, 2, 9
LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 10, 13, 14, 16, 19
REFSXP = 255
NA_INT = -(2**31)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos, self.refs = data, 0, []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("R serialized data ends early (truncated?)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        return n if n != -1 else (self.int() << 32) + self.int()

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise ValueError("not R XDR serialization (expected 'X\\n')")
        version = self.int()
        self.int(), self.int()  # writer and minimal reader R versions
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise ValueError(f"R serialization version {version} is not supported")

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == NILVALUE:
            return None
        if kind == REFSXP:
            return self.refs[(flags >> 8) - 1]
        if kind == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == LISTSXP:
            return self.pairlist(has_attr, has_tag)
        if kind == CHARSXP:
            n = self.int()
            return None if n == -1 else self.take(n).decode("utf-8", errors="replace")
        value = self.vector(kind)
        attrs = self.item() if has_attr else {}
        names = (attrs or {}).get("names")
        return dict(zip(names, value)) if names and len(names) == len(value) else value

    def vector(self, kind: int):
        n = self.length()
        if kind in (LGLSXP, INTSXP):
            return [None if v == NA_INT else v for v in struct.unpack(f">{n}i", self.take(4 * n))]
        if kind == REALSXP:
            return list(struct.unpack(f">{n}d", self.take(8 * n)))
        if kind in (STRSXP, VECSXP):
            return [self.item() for _ in range(n)]
        raise ValueError(f"R object of SEXP type {kind} is not supported by this reader")

    def pairlist(self, has_attr, has_tag) -> dict:
        """A pairlist (attributes, tagged arguments) as {tag: value}, read iteratively."""
        out = {}
        while True:
            if has_attr:
                self.item()
            tag = self.item() if has_tag else len(out)
            out[tag] = self.item()
            flags = self.int()
            if flags & 0xFF == NILVALUE:
                return out
            if flags & 0xFF != LISTSXP:
                raise ValueError("malformed pairlist in R serialized data")
            has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)


def unserialize(data: bytes):
    """One serialized R object (XDR) as Python values."""
    reader = _Reader(data)
    reader.header()
    return reader.item()


def read_lazyload_db(rdx_path: str, rdb_path: str) -> dict:
    """{variable name: value} of an R lazy-load database (``<name>.rdx`` + ``<name>.rdb``)."""
    with open(rdx_path, "rb") as f:
        index = unserialize(gzip.decompress(f.read()))
    with open(rdb_path, "rb") as f:
        db = f.read()
    out = {}
    for name, (offset, length) in index["variables"].items():
        blob = db[offset:offset + length]
        if len(blob) != length or length < 5:
            raise ValueError(f"{rdb_path}: entry {name} runs past the end of the file")
        raw = zlib.decompress(blob[4:])
        if len(raw) != struct.unpack(">I", blob[:4])[0]:
            raise ValueError(f"{rdb_path}: entry {name} has the wrong decompressed length")
        out[name] = unserialize(raw)
    return out
