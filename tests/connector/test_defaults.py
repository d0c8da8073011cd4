"""The README's configuration table states the defaults the code has, and no config file resets them."""

from __future__ import annotations

import inspect
import re
import tomllib
from typing import Any

import dlt

from connector.settings import CodatSettings
from connector.source import codat_source
from tests.utils import ROOT

ROOT = ROOT
# Defaults the table words instead of writing a value: all of them mean "not set" (None).
UNSET = {"none", "every company", "a tenth of the limit"}
ROW = re.compile(r"^\| [^|]+ \| `(?P<key>\w+)[^|]*\| `[^|]+` \| (?P<default>[^|]+) \| [^|]+ \|$")


def table_defaults() -> dict[str, str]:
    """`[sources.codat]` key to the default the README's configuration table states."""
    rows = [ROW.match(line) for line in (ROOT / "README.md").read_text().splitlines()]
    return {m["key"]: m["default"].strip() for m in rows if m}


def stated(text: str) -> Any:
    """The value a table cell states: `5000`, `1.0`, `true`, `codat_files`, or a phrase for None."""
    if text in UNSET:
        return None
    assert text.startswith("`"), f"the table states {text!r}, which is no value"
    inner = text.strip("`")
    if inner in ("true", "false"):
        return inner == "true"
    if inner.isdigit():
        return int(inner)
    if re.fullmatch(r"\d+\.\d+", inner):
        return float(inner)
    return inner


def test_the_readme_states_every_option_with_the_default_the_code_has() -> None:
    fields = CodatSettings.get_resolvable_fields()
    table = table_defaults()

    assert set(table) == set(fields)
    assert table.pop("api_key") == "required"
    for key, text in table.items():
        assert stated(text) == getattr(CodatSettings(), key), key


def test_the_source_takes_each_setting_as_an_argument_with_the_spec_default() -> None:
    parameters = inspect.signature(codat_source).parameters
    # settings: all of them at once, resolved; report: for callers in Python only
    arguments = {name: p.default for name, p in parameters.items() if name not in ("settings", "report")}

    assert list(arguments) == list(CodatSettings.get_resolvable_fields())
    assert arguments.pop("api_key") is dlt.secrets.value  # required
    assert arguments == {name: getattr(CodatSettings(), name) for name in arguments}


def test_the_committed_config_sets_no_source_option_again() -> None:
    config = tomllib.loads((ROOT / ".dlt" / "config.toml").read_text())

    assert config["sources"]["codat"] == {}
