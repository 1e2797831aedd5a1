"""Small SVG helpers shared by the tree picture and the report's charts: escaping, numbers,
colours, axis ticks. Nothing here trusts a name: every text goes through :func:`esc`."""

from __future__ import annotations

import math
import re

__all__ = ["PALETTE", "esc", "fmt", "lerp_color", "nice_ticks", "truncate"]

PALETTE = ("#3157d5", "#d5533a", "#1f8a4c", "#9b3fc4", "#c99514", "#1796a8", "#b8336a", "#5f6b7a")
"""Lane colours, the dashboard's ``COLORS``."""

# Characters XML 1.0 cannot hold at all (not even escaped): C0 controls but tab/LF/CR,
# surrogates, U+FFFE/U+FFFF. A name may contain them; the picture shows U+FFFD instead.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def esc(text: object) -> str:
    """``text`` as XML/HTML text or attribute value: ``& < > " '`` escaped, characters XML
    cannot hold replaced by U+FFFD. Safe inside elements and quoted attributes alike."""
    value = _NOT_XML.sub("\ufffd", str(text))
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    )


def fmt(value: float) -> str:
    """A pixel coordinate: one decimal, no ``-0.0``."""
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[: max(1, limit - 1)] + "…"


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


_SCALE = ("#1f8a4c", "#c99514", "#c62f2f")  # good -> middling -> bad


def lerp_color(t: float) -> str:
    """The colour of ``t`` in [0, 1] on the good (0, green) to bad (1, red) scale."""
    t = min(1.0, max(0.0, t))
    pos = t * (len(_SCALE) - 1)
    i = min(int(pos), len(_SCALE) - 2)
    frac = pos - i
    a, b = _rgb(_SCALE[i]), _rgb(_SCALE[i + 1])
    r, g, bl = (round(x + (y - x) * frac) for x, y in zip(a, b, strict=True))
    return f"#{r:02x}{g:02x}{bl:02x}"


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick positions (1, 2, 5 x 10^k apart) covering ``[lo, hi]``, about ``count``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    ticks: list[float] = []
    value = first
    while value <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks
