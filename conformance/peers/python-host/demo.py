"""The conformance demo app of PROTOCOL.md §19: `counter`, `todos`, `secret`."""
from __future__ import annotations

import secrets

import json_util
from host_core import CallError, ErrorCode, Module

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1


def expect(args: list, *kinds: str) -> list:
    """§19: the argument count must match exactly and each argument have its
    stated JSON type, else INVALID_ARGUMENT (nothing changes)."""
    if len(args) != len(kinds):
        raise CallError(ErrorCode.INVALID_ARGUMENT,
                        f"expected {len(kinds)} argument(s), got {len(args)}")
    for i, (arg, kind) in enumerate(zip(args, kinds)):
        if not _is_kind(arg, kind):
            raise CallError(ErrorCode.INVALID_ARGUMENT, f"argument {i + 1} must be {kind}")
    return args


def _is_kind(value, kind: str) -> bool:
    if kind == "int64":  # §19: `1.0`, `1e0`, `-0` and `"1"` are not integers (J7)
        return json_util.is_integer(value) and INT64_MIN <= value <= INT64_MAX
    if kind == "uint64":
        return json_util.is_integer(value) and 0 <= value <= UINT64_MAX
    if kind == "string":
        return isinstance(value, str)
    if kind == "strings":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    raise AssertionError(kind)


class Counter(Module):
    """§19.1"""

    def __init__(self) -> None:
        super().__init__({"count": 0})
        self.methods = {"increase": self.increase, "decrease": self.decrease,
                        "fail": self.fail}

    def _set(self, count: int) -> int:
        if not INT64_MIN <= count <= INT64_MAX:
            raise CallError(ErrorCode.INVALID_ARGUMENT, "count would leave the signed 64-bit range")
        self.state["count"] = count
        return count

    def increase(self, args: list) -> int:
        (by,) = expect(args, "int64")
        return self._set(self.state["count"] + by)

    def decrease(self, args: list) -> int:
        (by,) = expect(args, "int64")
        return self._set(self.state["count"] - by)

    def fail(self, args: list) -> None:
        (message,) = expect(args, "string")
        # §19.1: FAILED whose message is exactly the argument; no details.
        raise CallError(ErrorCode.FAILED, message)


class Todos(Module):
    """§19.2. The id counter is host-internal and never published."""

    def __init__(self) -> None:
        super().__init__({"items": []}, internal={"next_id": 1})
        self.methods = {"add": self.add, "toggle": self.toggle, "remove": self.remove,
                        "clear": self.clear, "add_many": self.add_many}

    def _append(self, text: str) -> int:
        new_id = self.internal["next_id"]
        self.internal["next_id"] = new_id + 1
        self.state["items"].append({"id": new_id, "text": text, "done": False})
        return new_id

    def _find(self, item_id: int) -> int:
        for index, item in enumerate(self.state["items"]):
            if item["id"] == item_id:
                return index
        raise CallError(ErrorCode.NOT_FOUND, f"no item with id {item_id}")

    def add(self, args: list) -> int:
        (text,) = expect(args, "string")
        return self._append(text)

    def toggle(self, args: list) -> bool:
        (item_id,) = expect(args, "uint64")
        item = self.state["items"][self._find(item_id)]
        item["done"] = not item["done"]
        return item["done"]

    def remove(self, args: list) -> bool:
        (item_id,) = expect(args, "uint64")
        del self.state["items"][self._find(item_id)]
        return True

    def clear(self, args: list) -> int:
        expect(args)
        removed = len(self.state["items"])
        self.state["items"] = []
        return removed

    def add_many(self, args: list) -> list[int]:
        (texts,) = expect(args, "strings")
        return [self._append(text) for text in texts]  # one call = one version (V3)


class Secret(Module):
    """§19.3. Every token contains the initial one (`<initial>-r<n>`), which
    the conformance runner uses as its secret marker."""

    def __init__(self, token: str | None = None) -> None:
        initial = token or secrets.token_hex(16)
        super().__init__({"token": initial}, internal={"initial": initial, "rotations": 0})
        self.methods = {"rotate": self.rotate}

    def rotate(self, args: list) -> None:
        expect(args)
        self.internal["rotations"] += 1
        self.state["token"] = f"{self.internal['initial']}-r{self.internal['rotations']}"
        return None


def demo_modules(secret_token: str | None = None) -> dict[str, Module]:
    return {"counter": Counter(), "todos": Todos(), "secret": Secret(secret_token)}


DEFAULT_SECTIONS = ("counter", "todos")
