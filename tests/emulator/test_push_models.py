"""Create/update models per platform and validation of customer bodies against them."""

from __future__ import annotations

import json

import pytest

from connector.emulator.push_models import (
    VALIDATOR_NAME,
    has_model,
    load_model,
    model_slugs,
    platform_slug,
    validate_customer,
)
from tests.utils import FIXTURES

EXAMPLES = FIXTURES / "examples"
MODEL_EXAMPLE = "oas-cd39809-Codat-Accounting__get-create-update-customers-model__200__{}.json"

# Platform name -> the example file's suffix.
PLATFORMS = {
    "Exact (Netherlands)": "Exact_Netherlands_",
    "Exact (UK)": "Exact_UK_",
    "FreeAgent": "FreeAgent",
    "FreshBooks": "FreshBooks",
    "MYOB AccountRight and Essentials": "MYOB_AccountRight_and_Essentials",
    "Oracle NetSuite": "Oracle_NetSuite",
    "QuickBooks Desktop": "QuickBooks_Desktop",
    "QuickBooks Online": "QuickBooks_Online",
    "QuickBooks Online Sandbox": "QuickBooks_Online_Sandbox",
    "Sage 50 (UK)": "Sage_50_UK_",
    "Sage Business Cloud Accounting": "Sage_Business_Cloud_Accounting",
    "Sage Intacct": "Sage_Intacct",
    "Sandbox": "Sandbox",
    "Xero": "Xero",
}

ADDRESS = {
    "type": "Billing",
    "line1": "1 Place House",
    "line2": "Floor 2",
    "city": "London",
    "region": "England",
    "country": "United Kingdom",
    "postalCode": "WC1X 1AH",
}
SANDBOX_VALID = {
    "customerName": "Acme Ltd",
    "contactName": "Alia Okuneva",
    "emailAddress": "alia@example.com",
    "defaultCurrency": "GBP",
    "phone": "01374 565514",
    "addresses": [ADDRESS],
    "contacts": [
        {
            "name": "Alia Okuneva",
            "email": "alia@example.com",
            "phone": [{"number": "0800 545952", "type": "Landline"}],
            "address": ADDRESS,
            "status": "Active",
            "modifiedDate": "2023-04-26T12:38:16Z",
        }
    ],
    "registrationNumber": "NI7JEJVM",
    "taxNumber": "GB339072747",
    "status": "Active",
    "metadata": {"isDeleted": False},
}


def with_(base, **changes):
    return {**base, **changes}


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_every_platform_model_loads(platform):
    model = load_model(platform)
    assert has_model(platform)
    assert model["type"] == "Object"
    assert model["displayName"] == "Customer"
    assert "customerName" in model["properties"]
    assert any(prop["required"] for prop in model["properties"].values())


def test_model_files_are_exactly_the_example_platforms():
    assert model_slugs() == sorted(platform_slug(p) for p in PLATFORMS)


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_model_is_the_example_body(platform):
    path = EXAMPLES / MODEL_EXAMPLE.format(PLATFORMS[platform])
    assert load_model(platform) == json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "platform", ["Zoho Books", "Wave", "Dynamics 365 Business Central", "No Such Platform"]
)
def test_platforms_without_a_model_fall_back_to_sandbox(platform):
    assert not has_model(platform)
    assert load_model(platform) == load_model("Sandbox")


def test_loaded_models_are_copies():
    load_model("Xero")["properties"].clear()
    assert load_model("Xero")["properties"]


@pytest.mark.parametrize(
    ("platform", "body", "errors"),
    [
        pytest.param("Xero", {"customerName": "Acme"}, [], id="xero-name-only-valid"),
        pytest.param("Xero", {}, ["customerName"], id="xero-name-missing"),
        pytest.param("Xero", {"customerName": None}, ["customerName"], id="xero-name-null"),
        pytest.param("Xero", {"customerName": "  "}, ["customerName"], id="xero-name-blank"),
        pytest.param("Xero", {"customerName": 42}, ["customerName"], id="xero-name-not-string"),
        pytest.param("Xero", {"customerName": "A", "status": "InActive"}, [], id="xero-status-option-ok"),
        pytest.param(
            "Xero",
            {"customerName": "A", "status": "Archived"},
            ["status"],
            id="xero-status-not-an-option",
        ),
        pytest.param(
            "Xero",
            {"customerName": "A", "addresses": {"type": "Billing"}},
            ["addresses"],
            id="xero-addresses-not-array",
        ),
        pytest.param(
            "Xero",
            {"customerName": "A", "addresses": [{"line1": "x"}, "x", {"type": "Home"}]},
            ["addresses[0].type", "addresses[1]", "addresses[2].type"],
            id="xero-address-items-checked",
        ),
        pytest.param(
            "Xero",
            {"customerName": "A", "id": 5, "modifiedDate": "never", "sourceModifiedDate": []},
            [],
            id="xero-read-only-fields-ignored",
        ),
        pytest.param(
            "Xero", {"customerName": "A", "favouriteColour": 1}, [], id="xero-unknown-field-ignored"
        ),
        pytest.param("Xero", [{"customerName": "A"}], ["$"], id="body-is-a-list"),
        pytest.param("Xero", "Acme", ["$"], id="body-is-a-string"),
        pytest.param("Xero", None, ["$"], id="body-is-null"),
        pytest.param("QuickBooks Online", {"customerName": "A"}, ["status"], id="qbo-needs-status"),
        pytest.param(
            "QuickBooks Online",
            {"customerName": "A", "status": "Active", "contacts": [{"phone": [{"number": "1"}]}]},
            ["contacts[0].phone[0].type"],
            id="qbo-phone-type-required-in-nested-array",
        ),
        pytest.param(
            "FreeAgent", {"customerName": "A"}, ["contactName", "status"], id="freeagent-needs-more"
        ),
        pytest.param("FreshBooks", {"customerName": "A"}, ["emailAddress"], id="freshbooks-email"),
        pytest.param(
            "FreshBooks",
            {"emailAddress": "a@b.c", "defaultCurrency": "XYZ"},
            ["defaultCurrency"],
            id="freshbooks-currency-not-an-option",
        ),
        pytest.param("Exact (UK)", {"customerName": "A"}, ["contacts"], id="exact-uk-contacts"),
        pytest.param(
            "Exact (UK)",
            {"customerName": "A", "contacts": []},
            ["contacts"],
            id="exact-uk-contacts-empty",
        ),
        pytest.param(
            "Exact (UK)",
            {"customerName": "A", "contacts": [{"email": "a@b.c"}]},
            ["contacts[0].name"],
            id="exact-uk-contact-name",
        ),
        pytest.param(
            "Oracle NetSuite",
            {"customerName": "A", "status": "Active", "addresses": [{"type": "Home"}]},
            ["addresses[0].country", "addresses[0].type"],
            id="netsuite-address-type-and-country",
        ),
        pytest.param("Sage 50 (UK)", {"customerName": "A"}, [], id="sage50-required-id-is-read-only"),
        pytest.param(
            "Sage 50 (UK)",
            {"customerName": "A", "addresses": [{"type": "Delivery"}]},
            ["addresses[0].countryCode", "addresses[0].line1"],
            id="sage50-address-line1-and-country-code",
        ),
        pytest.param(
            "Sage Intacct",
            {"customerName": "A", "contactName": "B", "status": "Active", "defaultCurrency": "EUR"},
            ["defaultCurrency"],
            id="intacct-currency-not-an-option",
        ),
        pytest.param(
            "MYOB AccountRight and Essentials",
            {"customerName": "A", "status": "Active", "contacts": [{"name": "B"}]},
            ["contacts[0].address"],
            id="myob-contact-address-required",
        ),
        pytest.param(
            "MYOB AccountRight and Essentials",
            {"customerName": "A", "status": "Active", "contacts": [{"address": {"line1": "x"}}]},
            ["contacts[0].address.type"],
            id="myob-nested-object-checked",
        ),
        pytest.param("Sandbox", SANDBOX_VALID, [], id="sandbox-full-body-valid"),
        pytest.param(
            "Sandbox",
            with_(SANDBOX_VALID, metadata={"isDeleted": "no"}),
            ["metadata.isDeleted"],
            id="sandbox-boolean-type",
        ),
        pytest.param(
            "Sandbox",
            with_(SANDBOX_VALID, contacts=[{**SANDBOX_VALID["contacts"][0], "modifiedDate": "x"}]),
            ["contacts[0].modifiedDate"],
            id="sandbox-datetime-type",
        ),
        pytest.param(
            "Sandbox",
            with_(SANDBOX_VALID, metadata=None),
            ["metadata"],
            id="sandbox-required-object-null",
        ),
        pytest.param("Zoho Books", {"customerName": "A"}, None, id="platform-without-model-uses-sandbox"),
    ],
)
def test_validate_customer(platform, body, errors):
    items = validate_customer(load_model(platform), body)
    if errors is None:
        assert items
    else:
        assert sorted(item["itemId"] for item in items) == errors
    for item in items:
        assert item["validatorName"] == VALIDATOR_NAME
        assert item["message"]


@pytest.mark.parametrize(
    ("platform", "valid"),
    [
        ("Xero", True),
        ("Sage Business Cloud Accounting", True),
        ("Exact (UK)", False),
        ("QuickBooks Online", False),
        ("FreeAgent", False),
        ("FreshBooks", False),
        ("Sandbox", False),
    ],
)
def test_required_fields_differ_by_platform(platform, valid):
    body = {"customerName": "Acme Ltd", "phone": "0800 445 6957"}
    assert (validate_customer(load_model(platform), body) == []) is valid
