"""Parsing words from the command line into typed values: ``key=value``, ids, groups, steps.

Only ASCII digits make numbers. Python's ``int()`` and ``float()`` also accept other scripts'
digits (``int('٣') == 3``), underscores (``int('1_0') == 10``) and surrounding blanks, and
``int('²')`` raises a bare ``ValueError``; none of that is a number here. Integers are limited
to 64 bits so that every parsed value fits the store's columns and a float.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from retune.errors import InvalidArgument

__all__ = [
    "INT64_MAX",
    "parse_assignments",
    "parse_candidates",
    "parse_count",
    "parse_group",
    "parse_int",
    "parse_node",
    "parse_seconds",
    "parse_value",
]

INT64_MAX = 2**63 - 1
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_NODE = re.compile(r"n?([0-9]+)", re.ASCII)
_SPECIAL = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def _checked_int(text: str, what: str) -> int:
    value = int(text)
    if abs(value) > INT64_MAX:
        shown = text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"
        raise InvalidArgument(f"{what} {shown} is too large (at most {INT64_MAX})")
    return value


def parse_int(text: str, what: str = "number") -> int:
    """``text`` as an integer of ASCII digits (optional sign) within 64 bits.

    Raises :class:`InvalidArgument` naming ``what`` otherwise (``'²'``, ``'٣'``, ``'1_0'``,
    ``'1.5'``, ``'1' + '0' * 400``).
    """
    if not _INT.fullmatch(text):
        raise InvalidArgument(f"{what} must be a whole number in ASCII digits, got {text!r}")
    return _checked_int(text, what)


def parse_count(text: str, what: str = "number") -> int:
    """Like :func:`parse_int` but at least 0 (steps, ids, ports, counts)."""
    value = parse_int(text, what)
    if value < 0:
        raise InvalidArgument(f"{what} must be 0 or more, got {value}")
    return value


def parse_seconds(text: str, what: str = "seconds") -> float:
    """A finite, non-negative number of seconds in ASCII (``'0.5'``, ``'1e-3'``, ``'120'``).

    Raises :class:`InvalidArgument` naming ``what`` otherwise (``'inf'``, ``'-1'``, ``'٣'``).
    """
    if not _FLOAT.fullmatch(text):
        raise InvalidArgument(f"{what} must be a number in ASCII digits, got {text!r}")
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{what} must be finite and 0 or more, got {text}")
    return value


def parse_node(text: str) -> int:
    """A node written ``n3`` or ``3`` (ASCII digits, 64 bits) -> 3; :class:`InvalidArgument`
    otherwise (``'n²'``, ``'n٣'``, ``'x'``)."""
    match = _NODE.fullmatch(text.strip())
    if match is None:
        raise InvalidArgument(f"{text!r} is not a node (nodes are written n1, n2, ...)")
    return _checked_int(match.group(1), "node")


def parse_group(text: str | None) -> int | str | None:
    """A param group: an index in ASCII digits, else a group name.

    Digits of other scripts (``'²'``, ``'٣'``) are neither: :class:`InvalidArgument`.
    """
    if text is None:
        return None
    if _INT.fullmatch(text) and not text.startswith(("+", "-")):
        return _checked_int(text, "group index")
    if text.isdigit() and not text.isascii():
        raise InvalidArgument(f"a group index must be in ASCII digits, got {text!r}")
    if not text.strip():
        raise InvalidArgument("a group name must not be empty")
    return text


def parse_value(text: str) -> Any:
    """``true``/``false`` -> bool, integers -> int, numbers -> float (``nan``/``inf`` too),
    ``a,b`` -> tuple of those; anything else stays a string (the validator then says why).

    Numbers are ASCII only (``'٣'`` stays a string). Raises :class:`InvalidArgument` for an
    integer beyond 64 bits.
    """
    if "," in text:
        return tuple(parse_value(part.strip()) for part in text.split(","))
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.fullmatch(text):
        return _checked_int(text, "value")
    if _FLOAT.fullmatch(text) or lowered in _SPECIAL:
        return float(text)
    return text


def parse_assignments(words: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-3", "betas=0.9,0.99"]`` -> ``{"lr": 0.001, "betas": (0.9, 0.99)}``.

    Raises :class:`InvalidArgument` for a word without ``=``, an empty name or value, an empty
    element of a tuple (``betas=0.9,``), a name given twice and an integer beyond 64 bits.
    Types are not checked here: a string stays a string so that :func:`validate` can say what
    the tunable expects.
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
        try:
            out[key] = parse_value(raw)
        except InvalidArgument as e:
            raise InvalidArgument(f"{key}: {e}") from e
    return out


def parse_candidates(words: Sequence[str]) -> dict[str, list[Any]]:
    """``["lr=1e-3,3e-4", "weight_decay=0"]`` -> ``{"lr": [0.001, 0.0003], "weight_decay": [0]}``.

    The values an exploration tries: commas separate candidates. A tuple-valued tunable
    separates its candidates with ``;`` instead (``betas=0.9,0.99;0.9,0.999``). Raises
    :class:`InvalidArgument` for a word without ``=``, an empty name, an empty candidate
    (``lr=1e-3,``), a name given twice and an integer beyond 64 bits; types and bounds are
    checked by :func:`~retune.control.validate` later.
    """
    out: dict[str, list[Any]] = {}
    for word in words:
        key, sep, raw = word.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise InvalidArgument(f"expected name=value1,value2,..., got {word!r}")
        if key in out:
            raise InvalidArgument(f"{key} is given twice")
        parts = raw.split(";") if ";" in raw else raw.split(",")
        if not raw or any(not part.strip() for part in parts):
            raise InvalidArgument(f"{key} has an empty value in {raw!r}")
        try:
            out[key] = [parse_value(part.strip()) for part in parts]
        except InvalidArgument as e:
            raise InvalidArgument(f"{key}: {e}") from e
    return out
