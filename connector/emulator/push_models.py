"""Create/update models (`PushOption`) per platform, and validation of customer bodies by them."""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from connector.emulator.model import Json

ValidationItem = dict[str, str | None]

FALLBACK_PLATFORM = "Sandbox"
READ_ONLY_FIELDS = frozenset({"id", "modifiedDate", "sourceModifiedDate"})
VALIDATOR_NAME = "CustomerValidator"

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "String": (str,),
    "Number": (int, float),
    "Boolean": (bool,),
    "DateTime": (str,),
    "Array": (list,),
    "Object": (dict,),
}


def platform_slug(platform_name: str) -> str:
    """The file stem of a platform's model: `Exact (UK)` becomes `exact-uk`."""
    return re.sub(r"[^a-z0-9]+", "-", platform_name.lower()).strip("-")


def model_slugs() -> list[str]:
    """The slugs of every platform that has its own model file, sorted."""
    folder = resources.files("connector.emulator") / "models"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def has_model(platform_name: str) -> bool:
    """Whether the platform has its own model rather than the Sandbox fallback."""
    return platform_slug(platform_name) in model_slugs()


@cache
def _model_text(slug: str) -> str | None:
    path = resources.files("connector.emulator") / "models" / f"{slug}.json"
    return path.read_text(encoding="utf-8") if path.is_file() else None


@cache
def _parsed_model(slug: str) -> Json:
    text = _model_text(slug) or _model_text(platform_slug(FALLBACK_PLATFORM))
    if text is None:
        raise FileNotFoundError(f"no create/update model for {slug!r} nor {FALLBACK_PLATFORM!r}")
    model: Json = json.loads(text)
    return model


def load_model(platform_name: str) -> Json:
    """The customers `PushOption` of a platform, as `GET .../options/customers` serves it.

    Args:
        platform_name: The connection's `platformName`, such as `Xero` or `Exact (UK)`.

    Returns:
        A fresh copy of the platform's model, or of the Sandbox model for platforms without one.
    """
    return copy.deepcopy(_parsed_model(platform_slug(platform_name)))


def validate_customer(model: Json, body: Any) -> list[ValidationItem]:
    """Check a create/update body against a `PushOption`; an empty list means it is valid.

    Required properties must be present and non-empty (not null, blank, `[]` or `{}`); a value of
    a property with `options` must be one of the option values; values must match the property's
    type; properties of `Object`s and of each `Array` item are checked the same way, their
    required-ness applying only when the parent is present. Read-only `id`, `modifiedDate` and
    `sourceModifiedDate` are ignored, and so are fields the model does not describe.

    Args:
        model: The platform's `PushOption`.
        body: The parsed JSON body of the request.

    Returns:
        Validation error items `{itemId, message, validatorName}`; `itemId` is the field's path,
        such as `contacts[0].phone[1].number`.
    """
    if not isinstance(body, dict):
        return [_error("$", "The customer must be a JSON object.")]
    errors: list[ValidationItem] = []
    properties = {
        name: prop for name, prop in (model.get("properties") or {}).items() if name not in READ_ONLY_FIELDS
    }
    _check_object(properties, body, "", errors)
    return errors


def _error(item_id: str, message: str) -> ValidationItem:
    return {"itemId": item_id, "message": message, "validatorName": VALIDATOR_NAME}


def _check_object(properties: Json, value: Json, path: str, errors: list[ValidationItem]) -> None:
    for name, prop in properties.items():
        field = f"{path}.{name}" if path else name
        _check_property(prop, value.get(name), field, errors)


def _is_empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or value == [] or value == {}


def _check_property(prop: Json, value: Any, field: str, errors: list[ValidationItem]) -> None:
    label = prop.get("displayName") or field
    if _is_empty(value):
        if prop.get("required"):
            errors.append(_error(field, f"{label} is required."))
            return
        if value is None:
            return
    kind = prop.get("type")
    if not _matches_type(kind, value):
        errors.append(_error(field, f"{label} must be of type {kind}."))
        return
    allowed = [option.get("value") for option in prop.get("options") or []]
    if allowed and value not in allowed:
        shown = ", ".join(str(a) for a in allowed[:10]) + (", ..." if len(allowed) > 10 else "")
        errors.append(_error(field, f"{label} must be one of: {shown}."))
        return
    children = prop.get("properties") or {}
    if kind == "Object" and children:
        _check_object(children, value, field, errors)
    elif kind == "Array" and children:
        for index, item in enumerate(value):
            if isinstance(item, dict):
                _check_object(children, item, f"{field}[{index}]", errors)
            else:
                errors.append(_error(f"{field}[{index}]", f"Every item of {label} must be an object."))


def _matches_type(kind: Any, value: Any) -> bool:
    expected = _PYTHON_TYPES.get(kind) if isinstance(kind, str) else None
    if expected is None:  # File, MultiPart or a type this emulator does not know: not checked
        return True
    if isinstance(value, bool) and kind != "Boolean":
        return False
    if not isinstance(value, expected):
        return False
    if kind == "DateTime":
        try:
            datetime.fromisoformat(str(value))
        except ValueError:
            return False
    return True
