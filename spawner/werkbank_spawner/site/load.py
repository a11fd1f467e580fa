"""Reading a site file: YAML as an admin means it, then one validation into a :class:`Site`.

::

    site = validate(load(path))    # SiteConfigError("<key.path>", "<what is wrong>")

:func:`validate` is the one way to a :class:`Site`: the schema's shape (pydantic) and then the
rules between keys (:mod:`.rules`), with every problem reported as ``<key.path>: <what>``, the
path as the admin writes it (``profiles[1].gpus``, ``limits.groups.workshop.memory``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import ValidationError

from . import rules
from .schema import Section, Site, SiteConfigError

M = TypeVar("M", bound=Section)


class _SiteLoader(yaml.SafeLoader):
    """YAML as an admin means it: duplicate keys are errors, and ``4:00:00`` is the string
    a walltime needs, not YAML 1.1's base-60 integer 14400."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class reports unhashable keys
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SiteLoader.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
for _first in "+-0123456789":
    # First match wins, so this goes in front of the int and float resolvers.
    _SiteLoader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:str", _SEXAGESIMAL)
    )


def load(path: str | os.PathLike, what: str = "sections (hub:, auth:, ...)") -> dict:
    """Read the site file (or another werkbank YAML file: ``what`` its top level holds). Returns
    its top-level mapping (an empty file is ``{}``).

    Raises :class:`SiteConfigError` (path: the file name) if it cannot be read, is not
    YAML, or is not a mapping.
    """
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SiteConfigError(name, f"cannot read the site file: {e}") from None
    try:
        data = yaml.load(text, Loader=_SiteLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{name}:{mark.line + 1}" if mark else name
        if isinstance(e, yaml.constructor.ConstructorError):
            raise SiteConfigError(where, str(e.problem)) from None
        raise SiteConfigError(where, f"not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise SiteConfigError(name, f"not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SiteConfigError(name, f"expected a mapping of {what}, got {kind_of(data)}")
    return data


def validate(data: object) -> Site:
    """The :class:`Site` a site file's mapping (as from :func:`load`) describes, every absent key
    with its default; ``data`` is not changed. Raises :class:`SiteConfigError` for the first
    problem: of shape (types, ranges, unknown keys), then of the rules between keys."""
    return validated(Site, data, rules.check)


def validated(model: type[M], data: object, check: Callable[[M], None]) -> M:
    """``model`` from a werkbank YAML file's mapping: its shape (pydantic), then ``check``, the
    rules between its keys; the first problem as :class:`SiteConfigError`."""
    if not isinstance(data, Mapping):
        raise SiteConfigError("(top level)", f"expected a mapping, got {kind_of(data)}")
    try:
        result = model.model_validate(dict(data))
    except ValidationError as e:
        raise first_problem(e) from None
    check(result)
    return result


def defaults() -> Site:
    """Every key's default: the site of an empty file (before the rules, which want a profile)."""
    return Site()


# --- pydantic's errors in the admin's words ------------------------------------------------

#: What a type error wanted, by pydantic's error type.
_WANTED = {
    "int_type": "a whole number",
    "string_type": "a string",
    "bool_type": "true or false",
    "float_type": "a number",
    "tuple_type": "a list",
    "list_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping of names",
    "int_or_str": "a whole number or a string",
}
_TYPE_NAMES = {
    str: "a string",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
}


def first_problem(error: ValidationError) -> SiteConfigError:
    """The first problem pydantic found, as ``<key.path>: <what is wrong>`` in the admin's words."""
    problem = error.errors(include_url=False)[0]
    kind, loc, value, ctx = (
        problem["type"],
        list(problem["loc"]),
        problem.get("input"),
        problem.get("ctx", {}),
    )
    if kind == "unknown_key":
        loc.append(ctx["key"])
        message = problem["msg"]
    elif loc and loc[-1] == "[key]":  # a mapping key of the wrong type (limits.groups)
        loc, value = loc[:-2], loc[-2]
        message = f"expected names as keys, got {kind_of(value)}"
    else:
        message = _message(kind, value, ctx, problem["msg"])
    return SiteConfigError(key_path(loc), message)


def _message(kind: str, value: object, ctx: dict, fallback: str) -> str:
    if kind in _WANTED:
        return f"expected {_WANTED[kind]}, got {kind_of(value)}"
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", ctx["expected"])
        return f"{value!r} is not one of: {', '.join(choices)}"
    if kind == "greater_than_equal":
        return f"{value!r} is below the minimum {ctx['ge']:g}"
    if kind == "less_than_equal":
        return f"{value!r} is above the maximum {ctx['le']:g}"
    if kind == "finite_number":
        return f"expected a finite number, got {value!r}"
    return fallback


def key_path(loc: list) -> str:
    """``["profiles", 0, "gpus"]`` → ``profiles[0].gpus``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def kind_of(value: object) -> str:
    """``a whole number 7``: what a value is, for an error message."""
    if value is None:
        return "nothing (null)"
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{_TYPE_NAMES.get(type(value), type(value).__name__)} {text}"
