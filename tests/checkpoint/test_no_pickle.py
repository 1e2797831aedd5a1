"""Checkpoint data is never unpickled: no pickler imported, every torch.load has
weights_only=True, numpy never loads pickles."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "retune"

_IMPORT = re.compile(
    r"^\s*(?:import|from)\s+[^\n]*\b(c?pickle|cloudpickle|dill|joblib|shelve)\b", re.M
)
_TORCH_LOAD = re.compile(r"torch\.load\(([^)]*)\)")
_NUMPY_LOAD = re.compile(r"\b(?:np|numpy)\.load\(([^)]*)\)")


def offenders(path: Path) -> list[str]:
    """Why the source at ``path`` could unpickle data (empty when it cannot)."""
    text = path.read_text(encoding="utf-8")
    found = [f"{path}: imports {m.group(1)}" for m in _IMPORT.finditer(text)]
    found += [
        f"{path}: torch.load without weights_only=True"
        for call in _TORCH_LOAD.finditer(text)
        if "weights_only=True" not in call.group(1)
    ]
    found += [
        f"{path}: numpy.load without allow_pickle=False"
        for call in _NUMPY_LOAD.finditer(text)
        if "allow_pickle=False" not in call.group(1)
    ]
    if re.search(r"\b(pickle|dill|cloudpickle)\.loads?\(", text):
        found.append(f"{path}: unpickles")
    return found


def test_no_code_path_unpickles() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 20
    assert [o for path in sources for o in offenders(path)] == []


def test_the_scan_catches_offenders(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os, pickle\nfrom dill import loads\n"
        "x = torch.load(f)\ny = torch.load(f, weights_only=True)\nz = np.load(f)\n"
    )
    found = offenders(bad)
    assert len(found) == 4, found
