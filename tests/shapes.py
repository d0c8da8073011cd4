"""The JSON shape of records: every field path with the JSON types seen there."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

# Maps with any keys (Codat's supplemental data): their type is recorded, not their keys.
FREE_MAPS = ("supplementalData.content",)


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def path_types(records: list[Any]) -> dict[str, set[str]]:
    """Every field path (array items as `[]`) in the records, with the JSON types seen there."""
    found: dict[str, set[str]] = defaultdict(set)

    def walk(value: Any, path: str) -> None:
        if path:
            found[path].add(json_type(value))
        if isinstance(value, dict) and path not in FREE_MAPS:
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else key)
        elif isinstance(value, list):
            for item in value:
                walk(item, f"{path}[]")

    for record in records:
        walk(record, "")
    return found
