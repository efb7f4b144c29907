"""One line a user can act on for a pydantic ValidationError of a config.

Pydantic's own locations carry its internals (``data.raw_path.str``,
``list[str]``, ``function-after[...]``: one entry per union member it tried)
and its messages speak Python (``Input should be a valid integer``). Configs
are JSON the user wrote, so the line names the JSON path in their file
(``data.raw_path[1]``), the JSON type expected and the value found in plain
words, and the obvious fix when there is one. Config values are strict JSON
types (docs/design.md: config), so these type errors are the common ones.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from allllm.config.sections import Config, DataConfig, ModelConfig, TokenizerConfig, TrainConfig

# A ValidationError's title names the model that was validated: the root of its paths.
_SECTIONS: dict[str, type[BaseModel]] = {
    cls.__name__: cls for cls in (Config, ModelConfig, TokenizerConfig, DataConfig, TrainConfig)
}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NOUNS: dict[Any, tuple[str, str]] = {  # JSON type: (singular, plural) in plain words
    bool: ("a boolean (true/false)", "booleans (true/false)"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    dict: ("an object", "objects"),
    list: ("a list", "lists"),
    type(None): ("null", "nulls"),
}
# pydantic error types that mean "wrong JSON type", with the Python type each expected
_TYPE_ERRORS: dict[str, Any] = {
    "bool_type": bool,
    "bool_parsing": bool,
    "int_type": int,
    "int_parsing": int,
    "int_from_float": int,
    "float_type": float,
    "float_parsing": float,
    "string_type": str,
    "list_type": list,
    "tuple_type": list,
    "dict_type": dict,
    "model_type": dict,
    "model_attributes_type": dict,
}
# a union member that reports one of these at its own level refused the value's type
_REFUSALS = {*_TYPE_ERRORS, "literal_error"}
_TRUE_WORDS = {"true", "yes", "y", "on", "1"}
_FALSE_WORDS = {"false", "no", "n", "off", "0"}


def _json_path(loc: Sequence[Any]) -> str:
    """``data.raw_path[1]``; keys that are not identifiers are quoted: ``x["<|eos|>"]``."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif _IDENTIFIER.match(str(item)):
            parts.append(("." if parts else "") + str(item))
        else:
            parts.append(f"[{json.dumps(str(item), ensure_ascii=False)}]")
    return "".join(parts) or "(top level)"


def _bare(tp: Any) -> Any:
    """``Annotated[str, AfterValidator(f)]`` is a ``str`` as far as the user is concerned."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    """The non-null members of a union annotation; ``[tp]`` for anything else."""
    tp = _bare(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return [_bare(a) for a in get_args(tp) if a is not type(None)]
    return [tp]


def _child(tp: Any, item: str | int) -> Any:
    """The annotation of key or index ``item`` inside annotation ``tp`` (None if unknown)."""
    members = _members(tp)
    inner = members[0] if len(members) == 1 else None
    origin, args = get_origin(inner), get_args(inner)
    if isinstance(item, str):
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            field = inner.model_fields.get(item)
            return field.annotation if field else None
        return args[1] if origin is dict and len(args) == 2 else None
    if origin is list and args:
        return args[0]
    if origin is tuple and args:
        return args[0] if args[-1] is Ellipsis else (args[item] if item < len(args) else None)
    return None


def _tag_name(tp: Any) -> str:
    """The tag pydantic puts in ``loc`` for a union member: ``str``, ``list[str]``."""
    tp = _bare(tp)
    origin = get_origin(tp)
    if origin is None:
        return getattr(tp, "__name__", repr(tp))
    return f"{origin.__name__}[{', '.join(_tag_name(a) for a in get_args(tp))}]"


def _looks_like_tag(item: Any) -> bool:
    """Without a model to go by: union tags are type names, never config keys."""
    return isinstance(item, str) and (
        "[" in item or item in ("str", "int", "float", "bool", "none") or item[:1].isupper()
    )


def _user_path(root: Any, loc: Sequence[Any]) -> tuple[list[str | int], Any, int | None, Any]:
    """The user's JSON path of a pydantic ``loc``, its annotation, and the union tag dropped.

    Pydantic names each union member it tried (``data.raw_path.str``,
    ``...list[str]``, ``function-after[...]``); those tags are no keys the user
    wrote, so they are dropped, and where one was (and which) groups the errors of
    one union. Returns (path, annotation or None, path length at the tag, tag).
    """
    parts: list[str | int] = []
    tp, tag_at, tag = root, None, None
    for item in loc:
        union = len(_members(tp)) > 1 if tp is not None else _looks_like_tag(item)
        if isinstance(item, str) and union:
            if tag_at is None:
                tag_at, tag = len(parts), item
            wrapped = re.match(r"^function-\w+\[.*?, (.*)\]$", item)
            name = wrapped.group(1) if wrapped else item
            tp = next((m for m in _members(tp) if _tag_name(m) == name), None)
            continue
        parts.append(item)
        tp = _child(tp, item) if tp is not None else None
    return parts, tp, tag_at, tag


def _type_words(tp: Any, plural: bool = False) -> str:
    """What to write for annotation ``tp``: ``str | list[str]`` is a string or a list of strings."""
    tp = _bare(tp)
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        words = [_type_words(a, plural) for a in args if a is not type(None)]
        words += ["null"] if type(None) in args else []
        return " or ".join(words) if len(words) <= 2 else f"{', '.join(words[:-1])} or {words[-1]}"
    if origin is Literal:
        values = [json.dumps(a) for a in args]
        if plural:
            return "values from " + ", ".join(values)
        return " or ".join(values) if len(values) <= 2 else "one of " + ", ".join(values)
    if origin in (list, tuple):
        noun = "lists" if plural else "a list"
        if not args:
            return noun
        count = f"{len(args)} " if origin is tuple and args[-1] is not Ellipsis else ""
        return f"{noun} of {count}{_type_words(args[0], plural=True)}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        tp = dict
    noun = _NOUNS.get(tp)
    return (noun[1] if plural else noun[0]) if noun else ("values" if plural else "a value")


def _got(value: Any) -> str:
    """The value the user wrote, in JSON words: ``the string "yes"``, ``the number 64.0``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        text = json.dumps(value if len(value) <= 40 else value[:40] + "…", ensure_ascii=False)
        return f"the string {text}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    return "an object" if isinstance(value, dict) else f"a {type(value).__name__}"


def _type_hint(expected: Any, got: Any) -> str:
    """How to fix a value of the wrong JSON type, when there is an obvious fix."""
    if isinstance(got, str) and expected is bool:
        word = got.strip().lower()
        value = "true" if word in _TRUE_WORDS else "false" if word in _FALSE_WORDS else None
        return f"write {value} without quotes" if value else "write true or false without quotes"
    if isinstance(got, str) and expected in (int, float):
        try:
            number = float(got)
        except ValueError:
            return ""
        ok = expected is float or number.is_integer()
        return f"write {got.strip()} without quotes" if ok else "write a whole number"
    if isinstance(got, bool) and expected in (int, float):
        return "write a number, not true/false"
    if isinstance(got, float) and expected is int:
        return f"write {int(got)}" if got.is_integer() else "write a whole number"
    if isinstance(got, (int, float)) and expected is bool:
        return "write true or false"
    if isinstance(got, (int, float)) and expected is str:
        return f'put it in quotes: "{json.dumps(got)}"'
    if isinstance(got, str) and expected is list:
        return f"write it as a list: [{json.dumps(got, ensure_ascii=False)}]"
    return ""


def _type_at(root: Any, parts: Sequence[str | int]) -> Any:
    """The annotation at a user path (no union tags in it), or None if unknown."""
    tp = root
    for item in parts:
        tp = _child(tp, item) if tp is not None else None
    return tp


def _describe(err: Any, parts: list[str | int], tp: Any, root: Any) -> tuple[str, str]:
    """(JSON path, what is wrong — how to fix) for one pydantic error."""
    kind, got = err["type"], err.get("input")
    msg = str(err["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return _json_path(parts), (
            "unknown key — remove it or check its spelling (see the config table in README)"
        )
    if kind == "missing" and parts and isinstance(parts[-1], int):  # a tuple too short
        whole = parts[:-1]
        return _json_path(whole), f"expected {_type_words(_type_at(root, whole))}, got {_got(got)}"
    if kind == "missing":
        return _json_path(parts), "required key is missing — add it"
    if kind in ("too_long", "too_short") and tp is not None:
        return _json_path(parts), f"expected {_type_words(tp)}, got {_got(got)}"
    if kind in _TYPE_ERRORS:
        expected = _TYPE_ERRORS[kind]
        words = _type_words(tp if tp is not None else expected)
        hint = _type_hint(expected, got)
        return _json_path(parts), f"expected {words}, got {_got(got)}" + (
            f" — {hint}" if hint else ""
        )
    if kind == "value_error" or "input" not in err:
        return _json_path(parts), msg
    return _json_path(parts), f"{msg.replace('Input should be', 'must be')}, got {_got(got)}"


def _problems(errors: list[Any], root: Any) -> list[tuple[str, str]]:
    """One (path, text) per problem; the errors of one union's members become one line.

    If a member got past its type check (``["a", 3]`` is a list, so the list
    member reports ``[1]``), that member's errors are the user's; if every member
    refused the value's type, one line says what the union takes.
    """
    groups: dict[tuple[Any, ...], list[tuple[Any, list[str | int], Any, int | None, Any]]] = {}
    for n, err in enumerate(errors):
        parts, tp, tag_at, tag = _user_path(root, err["loc"])
        key = ("union", *parts[:tag_at]) if tag_at is not None else ("one", n)
        groups.setdefault(key, []).append((err, parts, tp, tag_at, tag))
    out: list[tuple[str, str]] = []
    for key, items in groups.items():
        if key[0] == "one":
            out.append(_describe(items[0][0], items[0][1], items[0][2], root))
            continue
        deeper = [i for i in items if len(i[1]) > (i[3] or 0) or i[0]["type"] not in _REFUSALS]
        if deeper:
            member = deeper[0][4]
            out.extend(_describe(e, p, t, root) for e, p, t, _, m in deeper if m == member)
            continue
        prefix = list(key[1:])
        union = _type_at(root, prefix)
        err = items[0][0]
        words = (
            _type_words(union)
            if union is not None
            else " or ".join(_type_words(_TYPE_ERRORS.get(i[0]["type"])) for i in items)
        )
        hint = _type_hint(_TYPE_ERRORS.get(err["type"]), err.get("input"))
        text = f"expected {words}, got {_got(err.get('input'))}" + (f" — {hint}" if hint else "")
        out.append((_json_path(prefix), text))
    return out


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One line for a pydantic ValidationError: file, the user's JSON path, what, how to fix.

    The path is the one in the user's file (``data.raw_path[1]``), never pydantic's
    union tags; wrong JSON types say what was expected in plain words.
    """
    root = _SECTIONS.get(exc.title)
    problems = _problems(exc.errors(include_url=False), root)
    path, text = problems[0]
    more = f" (and {len(problems) - 1} more error(s))" if len(problems) > 1 else ""
    return f"{source}: {path}: {text}{more}"
