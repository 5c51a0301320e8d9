"""Settings: dataclass fields that carry their flag, choices, checks and whether they change results.

Every run setting, in :class:`gist.config.RunConfig` and in a method's own
options (``gist.methods.gist.options.GistConfig``), is a field made by
:func:`setting`. Its metadata is said once and read everywhere: the
``gist train`` flag and its help, the sweep key, the check of its value, and
whether it belongs in a run's fingerprint (:meth:`gist.config.RunConfig.results`).
Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import field, fields
from typing import Any, Optional, Union

from .errors import ConfigError

Choices = Union[tuple[str, ...], Callable[[], list[str]]]

__all__ = [
    "Choices",
    "check_fields",
    "choices_of",
    "flat_name",
    "leaf_fields",
    "number_problem",
    "parse_rate",
    "setting",
    "value_kind",
    "value_problem",
]


def setting(
    default: Any,
    *,
    flat: Optional[str] = None,
    choices: Optional[Choices] = None,
    changes_results: bool = True,
    per_run: bool = False,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    cli: bool = True,
    help: str = "",
) -> Any:
    """A config field with its metadata.

    Args:
        default: the default value.
        flat: the field's flat name (CLI flag, sweep key) when it is not the
            field's own name; flat names are unique across every group and method.
        choices: allowed values (or a function returning them, for registries).
        changes_results: ``False`` for fields that only say where or how to run.
        per_run: set for each run by the entry point (CLI flag or the sweep
            harness), never shared by the runs of a sweep.
        minimum: the smallest allowed value (numbers).
        maximum: the largest allowed value (numbers; an integer is always
            within 64 bits, a float always finite: :func:`number_problem`).
        cli: whether ``gist train`` has a flag for it.
        help: one line for ``gist train --help``.
    """
    meta = {
        "flat": flat,
        "choices": choices,
        "changes_results": changes_results,
        "per_run": per_run,
        "minimum": minimum,
        "maximum": maximum,
        "cli": cli,
        "help": help,
    }
    return field(default=default, metadata=meta)


def choices_of(f: dataclasses.Field) -> Optional[list[str]]:
    """The allowed values of field ``f`` (``None``: any value of its type)."""
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return list(choices() if callable(choices) else choices)


def flat_name(f: dataclasses.Field) -> str:
    """The field's flat name: its flag without ``--`` (``_`` for ``-``) and its sweep key."""
    return f.metadata.get("flat") or f.name


def leaf_fields(group: Any) -> Iterator[dataclasses.Field]:
    """The fields of a settings dataclass (or instance) made by :func:`setting`."""
    for f in fields(group):
        if "changes_results" in f.metadata:
            yield f


def check_fields(group: Any) -> None:
    """:class:`~gist.errors.ConfigError` naming the first field whose value breaks its choices or minimum."""
    for f in leaf_fields(group):
        value = getattr(group, f.name)
        allowed = choices_of(f)
        if allowed is not None and value is not None and value not in allowed:
            raise ConfigError(f"{flat_name(f)} must be one of {allowed}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = number_problem(value, f.metadata.get("minimum"), f.metadata.get("maximum"))
            if problem is not None:
                raise ConfigError(f"{flat_name(f)} {problem}, got {value}")


INT64_MAX = 2**63 - 1
"""The largest integer torch takes (``int64``)."""


def number_problem(value: float, minimum: Optional[float] = None, maximum: Optional[float] = None) -> Optional[str]:
    """What is wrong with a numeric setting's ``value`` (``"must be >= 1"``), or ``None``:
    a float must be finite, an integer within 64 bits, both within ``[minimum, maximum]``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if minimum is not None and value < minimum:
        return f"must be >= {minimum}"
    if maximum is not None and value > maximum:
        return f"must be <= {maximum}"
    if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        return f"must fit in 64 bits (at most {INT64_MAX})"
    return None


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)\s*$", re.IGNORECASE)
_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


def parse_rate(text: str) -> float:
    """Bits per second of a ``tc`` rate such as ``100mbit`` or ``1gbit``
    (units ``bit``, ``kbit``, ``mbit``, ``gbit``; decimal, as ``tc`` reads them)."""
    match = _RATE.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"bandwidth must look like 100mbit or 1gbit (units bit, kbit, mbit, gbit), got {text!r}")
    return float(match.group(1)) * _RATE_UNITS[match.group(2).lower()]


_KINDS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
_KIND_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def annotation(f: dataclasses.Field) -> str:
    """A field's annotation as written (``Optional[bool]``), whether or not its module postpones annotations."""
    if isinstance(f.type, str):
        return f.type
    text = repr(f.type).replace("typing.", "")
    return text if "[" in text else getattr(f.type, "__name__", text)


def value_kind(f: dataclasses.Field) -> Optional[type]:
    """The type of a setting's values (``int``, ``float``, ``str`` or ``bool``, from its annotation), else ``None``."""
    text = annotation(f)
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional[") : -1]
    return _KINDS.get(text)


def value_problem(f: dataclasses.Field, value: Any) -> Optional[str]:
    """What is wrong with ``value`` for the setting ``f`` (``"must be an
    integer"``): its type (an integer is also a float's value), its choices,
    its bounds (:func:`number_problem`); ``None`` if nothing is."""
    if value is None:
        return None if annotation(f).startswith("Optional[") or f.default is None else "must be set"
    kind = value_kind(f)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is not None:
        fits = numeric if kind is float else isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not fits:
            return f"must be {_KIND_WORDS[kind]}"
    allowed = choices_of(f)
    if allowed is not None and value not in allowed:
        return f"must be one of {allowed}"
    if numeric:
        return number_problem(value, f.metadata.get("minimum"), f.metadata.get("maximum"))
    return None
