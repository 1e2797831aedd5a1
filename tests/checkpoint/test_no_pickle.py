"""Checkpoint data is never unpickled: no pickle import, every torch.load has weights_only=True."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "retune"


def test_no_code_path_unpickles() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 20
    offenders = []
    for path in sources:
        text = path.read_text()
        if re.search(r"^\s*(import pickle|from pickle|import cloudpickle|import dill)", text, re.M):
            offenders.append(f"{path}: imports a pickler")
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call.group(1):
                offenders.append(f"{path}: torch.load without weights_only=True")
        if "pickle.load" in text or ("numpy.load(" in text and "allow_pickle=False" not in text):
            offenders.append(f"{path}: loads pickles")
    assert offenders == []
