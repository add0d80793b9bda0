"""The six sampling parameters as the page or an API client sends them, and their check into `SamplingParams`.

`ParamValues`' field names are the parameter names of the public endpoints (/chat, /regenerate, /edit), and its
defaults are the page's initial settings. Values arrive unchecked (an API client may send strings, NaN, 10**400, ...):
`make_params` clamps numbers into range with a note and refuses anything else (a `greedy` that is not true or false
included) with a plain-words `BadParams`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from cobra_app.generation import SamplingParams

FLAG_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True, "0": False}


@dataclass(frozen=True)
class ParamValues:
    """Sampling parameters as sent, unchecked (any type). Defaults: the page's initial settings."""

    max_new_tokens: Any = 128
    temperature: Any = 1.0
    top_p: Any = 1.0
    top_k: Any = 0
    repetition_penalty: Any = 1.0
    greedy: Any = True

    @classmethod
    def names(cls) -> list[str]:
        """The field names, in the endpoints' order."""
        return [f.name for f in fields(cls)]


DEFAULT_PARAMS = ParamValues()


@dataclass(frozen=True)
class ParamLimits:
    max_new_tokens: int = 512
    temperature: tuple[float, float] = (0.01, 5.0)
    top_p: tuple[float, float] = (0.01, 1.0)
    top_k: tuple[int, int] = (0, 1000)
    repetition_penalty: tuple[float, float] = (0.5, 3.0)


DEFAULT_PARAM_LIMITS = ParamLimits()


class BadParams(ValueError):
    def __init__(self, user_message: str):
        self.user_message = user_message
        super().__init__(user_message)


def number(name: str, value, integer: bool = False) -> float:
    """`value` as a finite float (rounded when `integer`); BadParams naming `name` otherwise."""
    if isinstance(value, bool) or value is None or value == "":
        raise BadParams(f"{name} must be a number.")
    try:
        result = float(value)
    except OverflowError:  # an integer too large for a float (an API client can send 10**400)
        raise BadParams(f"{name} must be a finite number.") from None
    except (TypeError, ValueError):
        raise BadParams(f"{name} must be a number, not {str(value)[:20]!r}.") from None
    if not math.isfinite(result):
        raise BadParams(f"{name} must be a finite number.")
    return float(round(result)) if integer else result


def flag(name: str, value) -> bool:
    """`value` as a bool: True/False, 1/0, or one of FLAG_WORDS (any case); BadParams naming `name` otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in FLAG_WORDS:
        return FLAG_WORDS[value.strip().lower()]
    raise BadParams(f"{name} must be true or false, not {str(value)[:20]!r}.")


def make_params(values: ParamValues, limits: ParamLimits = DEFAULT_PARAM_LIMITS) -> tuple[SamplingParams, list[str]]:
    """Sent values -> (SamplingParams, notes on values clamped into range). Non-numbers raise BadParams."""
    notes: list[str] = []

    def clamp(label: str, value: float, lo: float, hi: float) -> float:
        if value < lo or value > hi:
            fixed = min(max(value, lo), hi)
            notes.append(f"{label} {value:g} is out of range; using {fixed:g}.")
            return fixed
        return value

    def checked(label: str, value, bounds: tuple[float, float], integer: bool = False) -> float:
        return clamp(label, number(label, value, integer), *bounds)

    params = SamplingParams(
        max_new_tokens=int(checked("Max new tokens", values.max_new_tokens, (1, limits.max_new_tokens), True)),
        greedy=flag("Greedy", values.greedy),
        temperature=checked("Temperature", values.temperature, limits.temperature),
        top_p=checked("Top-p", values.top_p, limits.top_p),
        top_k=int(checked("Top-k", values.top_k, limits.top_k, True)),
        repetition_penalty=checked("Repetition penalty", values.repetition_penalty, limits.repetition_penalty),
    )
    return params, notes
