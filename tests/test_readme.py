"""The README's Python snippets run as written (those that need no download and no GPU)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS = ("load_qwen", "cuda")  # the real model downloads 1.1 GB; a GPU snippet needs a GPU


def _snippets() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_snippets():
    assert len(_snippets()) >= 3


@pytest.mark.parametrize("i", range(len(_snippets())))
def test_snippet_runs(i, tmp_path, monkeypatch):
    code = _snippets()[i]
    if any(n in code for n in NEEDS):
        pytest.skip("needs the real model's download or a GPU")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile("import torch, mixkern\n" + code, f"README snippet {i}", "exec"), namespace)
