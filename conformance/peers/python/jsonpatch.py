"""JSON text and RFC 6902 JSON Patch, as PROTOCOL.md §6 and §7 constrain them.

Pure functions, standard library only. Everything here raises PatchError (or
JsonTextError) on failure; the caller turns that into patch-apply-failed (P6)
or malformed-message (K4).
"""

from __future__ import annotations

import copy
import json
import re

MAX_DEPTH = 127          # §15 "Mirror depth": 127 levels, the view's own object is level 1
MIN_COPY_BUDGET = 4096   # §15 "Copy amplification": max(4096, patch length in bytes)

_OPS = ("add", "remove", "replace", "move", "copy", "test")
_INDEX_RE = re.compile(r"0|[1-9][0-9]*")  # PT3: "0" or no leading zeros


class JsonTextError(ValueError):
    """Text that is not JSON text this client accepts (§6.1)."""


class PatchError(ValueError):
    """A patch that fails to apply (§7.2-§7.4)."""


# ---------------------------------------------------------------------------
# JSON text (§6.1, §6.3)
# ---------------------------------------------------------------------------

_EXACT_MIN = -(2 ** 63)
_EXACT_MAX = 2 ** 64 - 1


def _parse_int(text: str):
    # J7: "-0" is the binary64 negative zero, a non-integer; keep it as such
    # rather than letting Python turn it into the integer 0 (J10).
    if text == "-0":
        return -0.0
    # J8: integers in [-2^63, 2^64-1] are exact. Beyond, an integer is its
    # nearest binary64 value, as the reference reads it, so that `test`
    # compares it as every other client does (§6.6), though Python could
    # keep it exact. The length check keeps int() off texts Python refuses
    # to convert (over 4300 digits).
    if len(text.lstrip("-")) <= 20:
        n = int(text)
        if _EXACT_MIN <= n <= _EXACT_MAX:
            return n
    return _parse_float(text)


def _parse_float(text: str) -> float:
    # J9: a literal beyond binary64's finite range (1e400) is not JSON.
    # Python would read it as an infinity, which no JSON can carry onwards.
    f = float(text)
    if f in (float("inf"), float("-inf")):
        raise JsonTextError(f"number {text} out of range")
    return f


def _reject_constant(name: str):
    # J9: NaN, Infinity and -Infinity are not JSON, though Python's json
    # module accepts them by default.
    raise JsonTextError(f"{name} is not JSON")


def parse_json(text: str, max_depth: int | None = None):
    """Parse RFC 8259 JSON text strictly.

    Rejects NaN, Infinity and numbers beyond binary64 (J9), lone surrogates
    (J2 lets a receiver treat them as not JSON), and, when max_depth is
    given, text nested deeper than that (§15 mirror depth, K4).
    """
    if not isinstance(text, str):
        raise JsonTextError("not a string")
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                           parse_constant=_reject_constant)
    except JsonTextError:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise JsonTextError(str(e)) from None
    _check_value(value, max_depth)
    return value


def _check_value(value, max_depth):
    """Iteratively check depth and lone surrogates."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, str):
            _check_str(v)
        elif isinstance(v, dict):
            if max_depth is not None and d > max_depth:
                raise JsonTextError("nested too deeply")
            for k, x in v.items():
                _check_str(k)
                stack.append((x, d + 1))
        elif isinstance(v, list):
            if max_depth is not None and d > max_depth:
                raise JsonTextError("nested too deeply")
            for x in v:
                stack.append((x, d + 1))


def _check_str(s: str):
    for ch in s:
        if "\ud800" <= ch <= "\udfff":
            raise JsonTextError("lone surrogate")


def depth(value) -> int:
    """Nesting depth of objects and arrays (a scalar is 0, {} is 1)."""
    best = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            best = max(best, d)
            children = v.values() if isinstance(v, dict) else v
            stack.extend((x, d + 1) for x in children)
    return best


def _utf8_len(s: str) -> int:
    return len(s.encode("utf-8", "surrogatepass"))


def count_values(value) -> int:
    """How §15 weighs what a copy adds: 1 per JSON value in the tree, the
    tree itself included (a copied container is 1 plus its contents), plus
    the UTF-8 length of every string in it, member names included."""
    n = 0
    stack = [value]
    while stack:
        v = stack.pop()
        n += 1
        if isinstance(v, str):
            n += _utf8_len(v)
        elif isinstance(v, dict):
            n += sum(_utf8_len(k) for k in v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return n


def dumps(value) -> str:
    """Compact JSON text. Python writes ints as integers and floats with
    repr (shortest round-trip), so no number changes value (J10)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def json_equal(a, b) -> bool:
    """Equality of §6.5. Python's == is not enough: True == 1 there, and
    JSON booleans never equal numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b  # J11: -0 == 0, 1.0 == 1
    if isinstance(a, str) and isinstance(b, str):
        return a == b  # by code point, no normalisation (J2)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return False


# ---------------------------------------------------------------------------
# JSON Pointer (§7.3)
# ---------------------------------------------------------------------------

def parse_pointer(ptr) -> list[str]:
    if not isinstance(ptr, str):
        raise PatchError("pointer is not a string")  # PC3
    if ptr == "":
        return []
    if not ptr.startswith("/"):
        raise PatchError(f"pointer {ptr!r} does not start with '/'")  # PT1
    tokens = []
    for raw in ptr[1:].split("/"):
        # PT2: '~' must be followed by '0' or '1'.
        i = 0
        while True:
            i = raw.find("~", i)
            if i < 0:
                break
            if i + 1 >= len(raw) or raw[i + 1] not in "01":
                raise PatchError(f"invalid escape in {ptr!r}")
            i += 2
        tokens.append(raw.replace("~1", "/").replace("~0", "~"))
    return tokens


def _array_index(token: str, length: int, *, for_add: bool, dash_ok: bool) -> int:
    """PT3/PT4. Returns the index (length for '-')."""
    if token == "-":
        if not dash_ok:
            raise PatchError("'-' is only valid as the last token of an add target")
        return length
    if not _INDEX_RE.fullmatch(token):
        raise PatchError(f"invalid array index {token!r}")
    idx = int(token)
    if idx > length or (idx == length and not for_add):
        raise PatchError(f"array index {idx} out of range")
    return idx


def _child(container, token: str):
    """Step one (non-final) token: PT5, the result must exist."""
    if isinstance(container, dict):
        if token not in container:
            raise PatchError(f"member {token!r} does not exist")
        return container[token]
    if isinstance(container, list):
        return container[_array_index(token, len(container), for_add=False, dash_ok=False)]
    raise PatchError("a pointer token applied to a scalar")


def _parent(doc, tokens):
    cur = doc
    for t in tokens[:-1]:
        cur = _child(cur, t)
    if not isinstance(cur, (dict, list)):
        raise PatchError("parent is not an object or array")
    return cur


def _get(doc, tokens):
    cur = doc
    for t in tokens:
        cur = _child(cur, t)
    return cur


def _add(doc, tokens, value):
    if not tokens:
        return value  # §7.4: add at "" replaces the whole document
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    else:
        idx = _array_index(last, len(parent), for_add=True, dash_ok=True)
        parent.insert(idx, value)
    return doc


def _remove(doc, tokens):
    """Returns (doc, removed value)."""
    if not tokens:
        # §7.4: removing the root leaves no object: the patch fails.
        raise PatchError("remove of the whole document")
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"member {last!r} does not exist")
        return doc, parent.pop(last)
    idx = _array_index(last, len(parent), for_add=False, dash_ok=False)
    return doc, parent.pop(idx)


def _replace(doc, tokens, value):
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"member {last!r} does not exist")
        parent[last] = value
    else:
        parent[_array_index(last, len(parent), for_add=False, dash_ok=False)] = value
    return doc


def _apply_ops(work, ops: list, patch_bytes: int):
    """Apply the operations in order to work (a private copy); returns the
    new document, which may be any JSON value until the caller checks it."""
    # §15 copy amplification: what copies add (values plus string bytes)
    # <= max(4096, patch bytes).
    copy_budget = max(MIN_COPY_BUDGET, patch_bytes)
    copied = 0
    for op in ops:
        if not isinstance(op, dict):
            raise PatchError("operation is not an object")
        name = op.get("op")
        if not isinstance(name, str) or name not in _OPS:
            raise PatchError(f"unknown op {name!r}")
        if "path" not in op:
            raise PatchError("missing path")
        path = parse_pointer(op["path"])
        if name in ("add", "replace", "test") and "value" not in op:
            raise PatchError("missing value")
        if name in ("move", "copy"):
            if "from" not in op:
                raise PatchError("missing from")
            src = parse_pointer(op["from"])
        if name == "add":
            work = _add(work, path, copy.deepcopy(op["value"]))
        elif name == "remove":
            work, _ = _remove(work, path)
        elif name == "replace":
            work = _replace(work, path, copy.deepcopy(op["value"]))
        elif name == "test":
            if not json_equal(_get(work, path), op["value"]):
                raise PatchError("test failed")
        elif name == "move":
            _get(work, src)  # §7.4: from MUST exist (even for a no-op move)
            if src == path:
                continue  # §7.4: from = path is a no-op
            if len(src) < len(path) and path[: len(src)] == src:
                # token-wise proper prefix (includes from = "", the root)
                raise PatchError("move into one of its own children")
            work, value = _remove(work, src)
            work = _add(work, path, value)
        elif name == "copy":
            value = _get(work, src)
            copied += count_values(value)
            if copied > copy_budget:
                raise PatchError("copy amplification limit")  # §15, PC1
            work = _add(work, path, copy.deepcopy(value))
    return work


def apply_patch(doc: dict, patch_text: str, *, max_depth: int = MAX_DEPTH) -> dict:
    """Apply patch_text (a JSON array of RFC 6902 operations) to a copy of doc.

    PC2: atomic. Returns the new document; raises PatchError and leaves doc
    untouched on any failure, including a final result that is not an object.
    """
    try:
        # The patch text is read without the mirror-depth limit: §15 lets a
        # client refuse text nested deeper, but this one only limits the
        # resulting mirror, so a value is accepted whenever the mirror stays
        # within the limit.
        ops = parse_json(patch_text)
    except JsonTextError as e:
        raise PatchError(f"patch_json is not JSON: {e}") from None
    if not isinstance(ops, list):
        raise PatchError("patch_json is not an array")  # PC3
    try:
        work = _apply_ops(copy.deepcopy(doc), ops, len(patch_text.encode("utf-8")))
    except RecursionError:
        # A value nested beyond what this interpreter can copy or compare:
        # refused like any patch over a resource limit (PC1).
        raise PatchError("nested too deeply") from None
    if not isinstance(work, dict):
        raise PatchError("result is not an object")  # PC1, PC2
    if depth(work) > max_depth:
        raise PatchError("result nested too deeply")  # §15 mirror depth, PC1
    return work
