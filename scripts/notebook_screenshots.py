"""Regenerate the notebook screenshots in docs/img (``make screenshots`` runs it too).

Starts JupyterLab on 127.0.0.1 in a temporary folder with a copy of examples/notebook.ipynb,
runs it in Debian's headless Chromium exactly as tests/notebook/test_lab.py does, and keeps
the pictures: the live chart with its branches, the tree, and the notebook at the job's cell.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from retune.server._headless import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.notebook._lab import Lab, play  # noqa: E402

OUT = ROOT / "docs" / "img"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        with Lab(work, f"sqlite:///{work / 'retune.db'}") as lab, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 1000})
                seen = play(page, lab, shots=work)
            finally:
                browser.close()
        for shot in seen.screenshots:
            shutil.copy(shot, OUT / shot.name)
            print(f"wrote {OUT / shot.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
