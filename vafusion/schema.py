"""Allowed ranges of configuration values, declared beside each field, and the check that applies them.

A field declared with :func:`setting` carries a :class:`Rule`; :func:`check` walks a (nested) config
dataclass and raises one :class:`~vafusion.errors.VafusionError` naming the first key out of range and
what is allowed, so a bad value stops a command before any work instead of as a traceback later.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vafusion.errors import VafusionError


@dataclass(frozen=True)
class Rule:
    """What a value must satisfy (``test``) and how to say it (``allowed``)."""

    allowed: str
    test: Callable[[Any], bool]

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


INTEGER = Rule("an integer", _integer)
AT_LEAST_1 = Rule("an integer >= 1", lambda v: _integer(v) and v >= 1)
AT_LEAST_0 = Rule("an integer >= 0", lambda v: _integer(v) and v >= 0)
POSITIVE = Rule("a number > 0", lambda v: _number(v) and v > 0)
NON_NEGATIVE = Rule("a number >= 0", lambda v: _number(v) and v >= 0)
DROPOUT = Rule("a probability 0 <= p < 1", lambda v: _number(v) and 0 <= v < 1)
PROBABILITY = Rule("a probability 0 <= p <= 1", lambda v: _number(v) and 0 <= v <= 1)
FRACTION = Rule("a fraction 0 < f < 1", lambda v: _number(v) and 0 < v < 1)
ODD_SIZES = Rule(
    "a non-empty list of odd integers >= 1",
    lambda v: len(v) > 0 and all(_integer(k) and k >= 1 and k % 2 == 1 for k in v),
)
DILATIONS = Rule(
    "a non-empty list of integers >= 1", lambda v: len(v) > 0 and all(_integer(d) and d >= 1 for d in v)
)


def optional(rule: Rule) -> Rule:
    """``rule``, or null."""
    return Rule(f"{rule.allowed}, or null", lambda v: v is None or rule(v))


def one_of(*choices: str) -> Rule:
    """One of ``choices``."""
    return Rule("one of " + ", ".join(choices), lambda v: v in choices)


def setting(default: Any, rule: Rule) -> Any:
    """A dataclass field with ``default`` (a list is copied per instance) whose values must pass ``rule``."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def check(cfg: Any, prefix: str = "") -> None:
    """Raise a one-line error for the first value of ``cfg`` (and the dataclasses inside it) out of range.

    Besides the per-field rules, a dataclass may define ``relations()`` returning ``(key, ok, allowed)``
    triples for rules between fields (a hop no longer than its window).
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check(value, f"{key}.")
            continue
        rule = f.metadata.get("rule")
        if rule is not None and not rule(value):
            _out_of_range(key, value, rule.allowed)
    relations = getattr(cfg, "relations", None)
    for key, ok, allowed in relations() if relations is not None else ():
        if not ok:
            _out_of_range(f"{prefix}{key}", getattr(cfg, key.split(".")[-1], None), allowed)


def _out_of_range(key: str, value: Any, allowed: str) -> None:
    raise VafusionError(
        None,
        f"{key}={value!r} is out of range",
        f"allowed: {allowed} (set it in the config file or with --set {key}=...)",
    )
