"""Strict JSON reading and writing, JSON equality and JSON Patch generation.

Pure functions; no I/O. Spec references are to spec/PROTOCOL.md.
"""
from __future__ import annotations

import json
from typing import Any

JSON = Any

# J4, §15: text nested deeper than this is not JSON. 127 is the reference's
# parser limit (the outermost array or object being level 1) and the mirror
# depth of §15, so whatever is accepted can also be published and mirrored.
MAX_DEPTH = 127


class NotJson(ValueError):
    """Text that the protocol does not accept as JSON (J1-J9)."""


def _parse_int(text: str) -> JSON:
    # J7: `-0` is the binary64 negative zero, not the integer 0.
    if text == "-0":
        return -0.0
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    # J9: a literal beyond binary64's finite range (`1e400`) is not JSON.
    if value in (float("inf"), float("-inf")):
        raise NotJson(f"number out of binary64 range: {text[:40]}")
    return value


def _reject_constant(name: str) -> JSON:
    # J9: NaN, Infinity and -Infinity are not JSON.
    raise NotJson(f"not JSON: {name}")


def _object(pairs: list[tuple[str, JSON]]) -> dict:
    # J3: a receiver MAY treat duplicate member names as malformed; we do.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise NotJson("duplicate object member")
    return obj


def _check_value(value: JSON) -> None:
    """J2: a lone surrogate (`"\\ud800"`) is not JSON here: Python strings can
    hold one but protobuf cannot encode it, so a stored one could never be
    published again. J4: nesting beyond MAX_DEPTH is not JSON."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")  # raises UnicodeEncodeError on a lone surrogate
        elif isinstance(item, (list, dict)):
            if depth > MAX_DEPTH:
                raise NotJson(f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key in item:
                    key.encode("utf-8")
                members = item.values()
            else:
                members = item
            stack.extend((member, depth + 1) for member in members)


def loads(text: str) -> JSON:
    """Parse JSON text strictly per J1-J9; raise NotJson otherwise."""
    try:
        value = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_reject_constant,
            object_pairs_hook=_object,
        )
        _check_value(value)
        return value
    except NotJson:
        raise
    except (ValueError, RecursionError, UnicodeEncodeError) as exc:
        # RecursionError: nested past what Python's parser reads (J4).
        raise NotJson(str(exc)[:200]) from None


def dumps(value: JSON) -> str:
    """Compact JSON text; raises ValueError for NaN/Infinity (J6, J9) and for
    lone surrogates, which UTF-8 cannot carry (J2)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")  # UnicodeEncodeError is a ValueError
    return text


def is_integer(value: JSON) -> bool:
    """A JSON integer (J7): parsed as int, and not a boolean."""
    return isinstance(value, int) and not isinstance(value, bool)


def equal(a: JSON, b: JSON) -> bool:
    """JSON equality of §6.5 (booleans never equal numbers; 1 == 1.0, -0 == 0)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return False


def pointer_token(name: str) -> str:
    """RFC 6901 escaping of one reference token (§6.4)."""
    return name.replace("~", "~0").replace("/", "~1")


def diff(old: JSON, new: JSON, path: str) -> list[dict]:
    """RFC 6902 operations (add/remove/replace only, PA1) turning old into new."""
    if equal(old, new):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict] = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{path}/{pointer_token(key)}"})
        for key, value in new.items():
            member = f"{path}/{pointer_token(key)}"
            if key in old:
                ops.extend(diff(old[key], value, member))
            else:
                ops.append({"op": "add", "path": member, "value": value})
        return ops
    if isinstance(old, list) and isinstance(new, list):
        return _diff_arrays(old, new, path)
    return [{"op": "replace", "path": path, "value": new}]


def _diff_arrays(old: list, new: list, path: str) -> list[dict]:
    prefix = 0
    while prefix < min(len(old), len(new)) and equal(old[prefix], new[prefix]):
        prefix += 1
    suffix = 0
    while (suffix < min(len(old), len(new)) - prefix
           and equal(old[-1 - suffix], new[-1 - suffix])):
        suffix += 1
    old_mid = old[prefix:len(old) - suffix]
    new_mid = new[prefix:len(new) - suffix]
    if len(old_mid) == len(new_mid):
        ops: list[dict] = []
        for i, (a, b) in enumerate(zip(old_mid, new_mid)):
            ops.extend(diff(a, b, f"{path}/{prefix + i}"))
        return ops
    if not new:
        return [{"op": "replace", "path": path, "value": []}]
    ops = [{"op": "remove", "path": f"{path}/{prefix}"} for _ in old_mid]
    ops += [{"op": "add", "path": f"{path}/{prefix + i}", "value": value}
            for i, value in enumerate(new_mid)]
    return ops
