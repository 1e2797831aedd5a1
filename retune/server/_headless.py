"""How this project drives Debian's headless Chromium (its tests, screenshots and benchmarks).

Playwright is given ``executable_path`` so it never downloads a browser of its own; the flags
keep Chromium from reaching for the network (closed here) at start.
"""

from __future__ import annotations

import shutil

__all__ = ["CHROMIUM", "CHROMIUM_ARGS"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
