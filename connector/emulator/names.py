"""Word lists and platform facts the emulator's data generator draws from."""

from __future__ import annotations

from typing import NamedTuple


class Platform(NamedTuple):
    """An accounting platform as Codat names it, with the id style its customers carry."""

    name: str
    key: str
    id_style: str
    weight: int


# Names as in the examples' PushOption and customer bodies; keys are Codat's platform keys.
PLATFORMS: tuple[Platform, ...] = (
    Platform("Xero", "gbol", "uuid", 12),
    Platform("QuickBooks Online", "qhyg", "small_int", 12),
    Platform("Sage Business Cloud Accounting", "tgff", "hex32", 6),
    Platform("Oracle NetSuite", "akxx", "int", 5),
    Platform("FreeAgent", "fbrh", "int8", 4),
    Platform("Exact (UK)", "pbbf", "uuid", 3),
    Platform("Exact (Netherlands)", "qudb", "uuid", 2),
    Platform("QuickBooks Desktop", "pqsw", "qbd", 3),
    Platform("QuickBooks Online Sandbox", "ndsk", "small_int", 1),
    Platform("Sage 50 (UK)", "hbql", "code", 3),
    Platform("Sage Intacct", "knfz", "code", 2),
    Platform("FreshBooks", "vxvy", "int6", 2),
    Platform("MYOB AccountRight and Essentials", "pdvj", "uuid", 2),
    Platform("Dynamics 365 Business Central", "trji", "uuid", 2),
    Platform("Clear Books", "jhch", "uuid", 1),
    Platform("KashFlow", "wvzu", "int8", 1),
    Platform("Wave", "pbtz", "token", 1),
    Platform("Zoho Books", "rwuv", "zoho", 1),
    Platform("Sage 200cloud", "jcrp", "small_int", 1),
    Platform("Sandbox", "mqjo", "uuid", 1),
)

BANKING_PLATFORMS: tuple[tuple[str, str], ...] = (
    ("Basiq", "dfxm"),
    ("Plaid", "suuo"),
    ("Banking Sandbox", "qhnd"),
)

# fmt: off
FIRST_NAMES = (
    "Arjun", "Belle", "Miguel", "Werner", "Alia", "Donny", "Arielle", "Chloé", "Søren", "Zoë",
    "Oluwaseun", "Mei", "Hiroshi", "Fatima", "Liam", "Olivia", "Noah", "Amelia", "Diogo", "Anna",
    "Ethan", "Isla", "Mateo", "Priya", "Kwame", "Ingrid", "Pierre", "Łukasz", "José", "Saoirse",
)
LAST_NAMES = (
    "Kuvalis", "Langworth", "Glover", "Hahn", "Okuneva", "Emmerich", "Grant", "Sousa", "Smith",
    "O'Brien", "Müller", "Nakamura", "García", "Nguyen", "Adeyemi", "Kowalski", "Dubois", "Rossi",
    "Johansson", "Patel", "MacDonald", "Van der Berg", "Schiller", "Breitenberg", "Jones", "Lee",
)
COMPANY_WORDS = (
    "Acme", "Northwind", "Blue Harbour", "Redwood", "Summit", "Pioneer", "Evergreen", "Quantum",
    "Harbor & Hill", "Crown", "Atlas", "Meridian", "Oak Lane", "Silverline", "Riverside", "Granite",
    "Bright Sparks", "Kestrel", "Foxglove", "Lighthouse", "Copper Kettle", "24 Locks", "Nimbus",
)
COMPANY_KINDS = (
    "Trading", "Consulting", "Bakery", "Logistics", "Studios", "Holdings", "Engineering",
    "Plumbing", "Partners", "Foods", "Media", "Motors", "Supplies", "Dental", "Florist",
)
COMPANY_SUFFIXES = ("Ltd", "Limited", "LLC", "Inc.", "GmbH", "B.V.", "PLC", "& Co", "", "S.A.")
COMPANY_DESCRIPTIONS = (
    "Wholesale and retail trading",
    "Technology services, including web and app design and development",
    "Family-run business since 1987",
    "Construction and maintenance",
    "",
)

STREET_NAMES = (
    "Lueilwitz Passage", "Halie Course", "Stokes Fords", "Louie Springs", "Williamson Freeway",
    "Dickens Walk", "Milan Lane", "Harber Motorway", "McClure Springs", "Cremin Brooks",
    "Paul Crest", "High Street", "Station Road", "Church Lane", "Mill Road", "Rue de la Paix",
)
# fmt: on

CITIES = (
    ("London", "England", "United Kingdom", "GB"),
    ("Manchester", "England", "United Kingdom", "GB"),
    ("Cardiff", "Wales", "United Kingdom", "GB"),
    ("Belfast", "Northern Ireland", "United Kingdom", "GB"),
    ("Edinburgh", "Scotland", "United Kingdom", "GB"),
    ("New York", "NY", "United States", "US"),
    ("Austin", "TX", "United States", "US"),
    ("Toronto", "ON", "Canada", "CA"),
    ("Amsterdam", "Noord-Holland", "Netherlands", "NL"),
    ("Paris", "Île-de-France", "France", "FR"),
    ("München", "Bayern", "Germany", "DE"),
    ("Sydney", "NSW", "Australia", "AU"),
)
CURRENCIES = ("GBP", "GBP", "GBP", "USD", "USD", "EUR", "EUR", "CAD", "AUD", "ZAR", "JPY", "CHF")
EMAIL_DOMAINS = ("gmail.com", "hotmail.com", "yahoo.com", "example.com", "outlook.com")

PHONE_TYPES = ("Primary", "Landline", "Mobile", "Fax", "Unknown")

# Ids that must survive being one URL path segment.
HOSTILE_IDS = (
    "ACME LTD",
    "A/B-001",
    "what?1",
    "hash#7",
    "100%",
    "a+b",
    "Café-Ünïcödé",
    "東京-42",
    " leading-space",
    "trailing-dot.",
    "semi;colon",
    "%2F-already-encoded",
)
# Customer ids that are URL dot segments, or look like one: sent raw, they reach another resource.
DOT_IDS = ("..", ".", "...")

SUPPLEMENTAL_KEYS = ("orders", "customFields", "loyalty", "crm")

ATTACHMENT_TYPES = (
    ("application/pdf", ".pdf"),
    ("application/pdf", ".pdf"),
    ("image/png", ".png"),
    ("image/jpeg", ".jpg"),
    ("text/csv", ".csv"),
    ("text/plain", ".txt"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ".xlsx"),
    ("application/zip", ".zip"),
    ("application/octet-stream", ".bin"),
)
# Attachment ids (any string, as customer ids) that reach another resource unless encoded with care.
HOSTILE_ATTACHMENT_IDS = ("..", ".", "...", "%2E%2E")
ATTACHMENT_STEMS = ("invoice", "contract", "statement", "receipt", "credit-note", "scan", "W-9")

# File names a careless consumer could turn into path traversal or broken files on disk.
HOSTILE_ATTACHMENT_NAMES = (
    "../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "résumé 東京.pdf",
    "reports/2023/q1 summary.pdf",
    "/absolute/path.csv",
    "tab\there.txt",
    "line\nbreak.csv",
    "bell\x07and\x1bescape.png",
    "CON",
    "nul.txt",
    "",
    " ",
    ".hidden",
    "trailing dot.",
    "emoji 📎 file.png",
    "quote\"and'apostrophe.pdf",
    "percent%20encoded%2Fname.pdf",
    "x" * 296 + ".pdf",
)
