"""Parsing ``key=value`` words from the command line into typed values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from retune.errors import InvalidArgument

__all__ = ["parse_assignments", "parse_value"]


def parse_value(text: str) -> Any:
    """``true``/``false`` -> bool, integers -> int, numbers -> float (``nan``/``inf`` too),
    ``a,b`` -> tuple of those; anything else stays a string (the validator then says why).
    """
    if "," in text:
        return tuple(parse_value(part.strip()) for part in text.split(","))
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_assignments(words: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-3", "betas=0.9,0.99"]`` -> ``{"lr": 0.001, "betas": (0.9, 0.99)}``.

    Raises :class:`InvalidArgument` for a word without ``=``, an empty name or value, an empty
    element of a tuple (``betas=0.9,``) and a name given twice. Types are not checked here: a
    string stays a string so that :func:`validate` can say what the tunable expects.
    """
    out: dict[str, Any] = {}
    for word in words:
        key, sep, raw = word.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key or not raw:
            raise InvalidArgument(f"expected name=value, got {word!r}")
        if "," in raw and any(not part.strip() for part in raw.split(",")):
            raise InvalidArgument(f"{key} has an empty element in {raw!r}")
        if key in out:
            raise InvalidArgument(f"{key} is given twice")
        out[key] = parse_value(raw)
    return out
