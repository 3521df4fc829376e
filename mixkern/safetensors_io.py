"""The safetensors file format, read and written without the safetensors package.

A file is: 8-byte little-endian header length, a JSON header ({name: {dtype, shape,
data_offsets}} plus an optional ``__metadata__`` of strings), then the raw little-endian
tensor bytes.  Files written here load with ``safetensors.torch.load_file`` and back.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import torch

_TORCH_TO_ST = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
                torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
_ST_TO_TORCH = {v: k for k, v in _TORCH_TO_ST.items()}


def write_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        if t.dtype not in _TORCH_TO_ST:
            raise TypeError(f"{name}: dtype {t.dtype} has no safetensors code")
        raw = t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _TORCH_TO_ST[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for raw in blobs:
            f.write(raw)


def read_safetensors(path: str, keep=lambda name: True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """({name: tensor}, metadata).  Raises ValueError on a truncated or malformed file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise ValueError(f"{path}: safetensors header runs past the end of the file (truncated?)")
    try:
        header = json.loads(data[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: safetensors header is not JSON ({e})") from None
    base = 8 + header_len
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, info in header.items():
        if not keep(name):
            continue
        start, end = info["data_offsets"]
        dtype = _ST_TO_TORCH.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: {name} has unsupported dtype {info['dtype']}")
        if base + end > len(data) or start > end:
            raise ValueError(f"{path}: {name} lies past the end of the file (truncated?)")
        numel = int(np.prod(info["shape"])) if info["shape"] else 1
        if numel == 0 and end == start:
            out[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        raw = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=base + start).copy()
        t = torch.from_numpy(raw).view(dtype)
        if t.numel() != numel:
            raise ValueError(f"{path}: {name} holds {t.numel()} values for shape {info['shape']}")
        out[name] = t.reshape(info["shape"])
    return out, meta
