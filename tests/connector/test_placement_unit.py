"""`shard_of` and `ShardPlan` alone: the company-to-shard mapping, the names, the plan's checks."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from connector.emulator.emulator import Emulator
from connector.errors import InvalidOption
from connector.placement import ShardPlan, shard_of
from connector.shards import ShardPlanChanged, check_plan
from connector.source import codat_source

# Shard of each id for 2, 3, 16, 100 and 1000 shards: coreutils `b2sum -l 64` of the stripped,
# lower-cased id, read as a big-endian integer, modulo the count. A change of hash moves them.
SHARDS_OF = {
    "8a210b68-6988-11ed-a1eb-0242ac120002": (1, 2, 7, 27, 527),  # cc3711f69281da07
    "0498e921-9b53-4396-a412-4f2f5983b0a2": (1, 0, 7, 63, 463),  # f8b2fb41fce641c7
    "company-1": (1, 0, 11, 99, 899),  # 5d71b50cf5d302bb
    "acme": (1, 0, 1, 85, 185),  # 302657b33c4da281
    "a": (1, 2, 15, 43, 343),  # 40f89e395b66422f
}
COUNTS = (2, 3, 16, 100, 1000)
CREDENTIALS = "postgresql://loader:s3cret-pw@db.internal:5432/warehouse"


@pytest.mark.parametrize("company_id", list(SHARDS_OF))
def test_a_company_keeps_its_shard_for_every_count(company_id: str) -> None:
    assert tuple(shard_of(company_id, count) for count in COUNTS) == SHARDS_OF[company_id]
    assert shard_of(company_id, 1) == 0
    assert ShardPlan(count=16).shard_of(company_id) == SHARDS_OF[company_id][2]


@pytest.mark.parametrize(
    "written",
    ["acme", "ACME", "Acme", " acme", "acme ", "\tAcMe\n"],
    ids=["lower", "upper", "title", "leading-space", "trailing-space", "mixed-and-whitespace"],
)
def test_case_and_surrounding_whitespace_do_not_move_a_company(written: str) -> None:
    assert tuple(shard_of(written, count) for count in COUNTS) == SHARDS_OF["acme"]


def test_ten_thousand_ids_spread_evenly_over_sixteen_shards() -> None:
    namespace = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")  # RFC 4122's URL namespace
    ids = [str(uuid.uuid5(namespace, f"company-{n}")) for n in range(10_000)]

    per_shard = Counter(shard_of(company_id, 16) for company_id in ids)

    assert sorted(per_shard) == list(range(16))
    mean = 10_000 / 16
    assert all(0.85 * mean <= n <= 1.15 * mean for n in per_shard.values()), per_shard


@pytest.mark.parametrize(
    ("count", "first", "last"),
    [(1, "00", "00"), (16, "00", "15"), (100, "00", "99"), (101, "000", "100"), (1000, "000", "999")],
    ids=["1", "16", "100", "101", "1000"],
)
def test_partition_keys_are_zero_padded_to_one_width_and_sort_in_shard_order(
    count: int, first: str, last: str
) -> None:
    keys = ShardPlan(count=count).partition_keys()

    assert len(keys) == count
    assert (keys[0], keys[-1]) == (first, last)
    assert {len(key) for key in keys} == {len(first)}
    assert sorted(keys) == keys


def test_sixteen_partition_keys() -> None:
    assert ShardPlan(count=16).partition_keys() == [
        "00", "01", "02", "03", "04", "05", "06", "07",
        "08", "09", "10", "11", "12", "13", "14", "15",
    ]  # fmt: skip


def test_a_shards_names_carry_its_key_and_the_count(tmp_path: Path) -> None:
    plan = ShardPlan(count=16, prefix="acct", duckdb_folder=str(tmp_path / "shards"))

    assert plan.key(7) == "07"
    assert plan.pipeline_name(7) == "acct_shard_07_of_16"
    assert plan.staging_layout(7) == "%s_staging_shard_07_of_16"
    assert plan.staging_layout(7) % "codat" == "codat_staging_shard_07_of_16"
    assert plan.duckdb_file(7) == tmp_path / "shards" / "acct_shard_07_of_16.duckdb"
    assert plan.duckdb_file(7).is_absolute()


def test_parse_reads_back_every_pipeline_name_of_the_plan() -> None:
    plan = ShardPlan(count=16, prefix="acct")

    assert [plan.parse(plan.pipeline_name(shard)) for shard in range(16)] == [(s, 16) for s in range(16)]
    assert [plan.shard(key) for key in plan.partition_keys()] == list(range(16))


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("acct_shard_3_of_4", (3, 4)),  # another count's pipeline: how a changed count is found
        ("codat_shard_03_of_16", None),
        ("acct_shard_03_of_16_extra", None),
        ("acct_shard_x_of_16", None),
        ("acct", None),
    ],
    ids=["another-count", "another-prefix", "trailing-text", "not-a-number", "prefix-alone"],
)
def test_parse_of_other_names(name: str, parsed: tuple[int, int] | None) -> None:
    assert ShardPlan(count=16, prefix="acct").parse(name) == parsed


@pytest.mark.parametrize("key", ["16", "7", "-1", "007", "dataset", ""])
def test_shard_refuses_a_key_of_no_shard_of_the_plan(key: str) -> None:
    with pytest.raises(InvalidOption) as refused:
        ShardPlan(count=16).shard(key)

    assert str(refused.value) == f"{key!r} is not a shard of this plan: use 00 to 15"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"count": 0}, "the shard count must be between 1 and 1000; got 0"),
        ({"count": 1001}, "the shard count must be between 1 and 1000; got 1001"),
        (
            {"prefix": "Codat"},
            "the shard plan's prefix must be lower-case letters, digits and _ starting with a letter; "
            "got 'Codat'",
        ),
        (
            {"prefix": "1codat"},
            "the shard plan's prefix must be lower-case letters, digits and _ starting with a letter; "
            "got '1codat'",
        ),
        (
            {"dataset_name": "codat-prod"},
            "the shard plan's dataset_name must be lower-case letters, digits and _ starting with a "
            "letter; got 'codat-prod'",
        ),
        (
            {"dataset_name": ""},
            "the shard plan's dataset_name must be lower-case letters, digits and _ starting with a "
            "letter; got ''",
        ),
        ({"shards_at_once": 0}, "shards_at_once must be at least 1; got 0"),
        (
            {"shards_at_once": 4, "requests_per_minute": 3},
            "requests_per_minute (3) leaves less than one request a minute to each of the 4 shards "
            "running at once",
        ),
    ],
    ids=[
        "count-0",
        "count-1001",
        "prefix-upper-case",
        "prefix-digit-first",
        "dataset-hyphen",
        "dataset-empty",
        "shards-at-once-0",
        "requests-per-minute-too-few",
    ],
)
def test_a_plan_refuses_what_it_cannot_run_and_names_it(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidOption) as refused:
        ShardPlan(**{"count": 16, **options})  # type: ignore[arg-type]

    assert str(refused.value) == message


def test_the_largest_and_smallest_counts_are_accepted() -> None:
    assert ShardPlan(count=1).partition_keys() == ["00"]
    assert len(ShardPlan(count=1000).partition_keys()) == 1000


@pytest.mark.parametrize(
    ("count", "at_once", "requests_per_minute", "each"),
    [(16, 4, 1000, 250), (16, 3, 1000, 333), (2, 4, 1000, 500), (3, 8, 1000, 333), (4, 4, 4, 1)],
    ids=["4-at-once", "rounded-down", "fewer-shards-than-at-once", "3-shards-8-at-once", "one-each"],
)
def test_each_running_shard_gets_its_part_of_the_ips_limit(
    count: int, at_once: int, requests_per_minute: int, each: int
) -> None:
    plan = ShardPlan(count=count, shards_at_once=at_once, requests_per_minute=requests_per_minute)

    assert plan.shard_requests_per_minute() == each


def test_the_plans_repr_does_not_show_its_credentials() -> None:
    plan = ShardPlan(count=4, destination="postgres", credentials=CREDENTIALS)

    assert plan.credentials == CREDENTIALS
    for shown in (repr(plan), str(plan)):
        assert "s3cret-pw" not in shown
        assert "db.internal" not in shown
        assert "destination='postgres'" in shown


@pytest.mark.parametrize(
    ("shards", "shard", "message"),
    [
        (0, 0, "shards (SOURCES__CODAT__SHARDS) must be at least 1; got 0"),
        (-2, 0, "shards (SOURCES__CODAT__SHARDS) must be at least 1; got -2"),
        (4, 4, "shard (SOURCES__CODAT__SHARD) must be between 0 and 3; got 4"),
        (4, -1, "shard (SOURCES__CODAT__SHARD) must be between 0 and 3; got -1"),
        (1, 1, "shard (SOURCES__CODAT__SHARD) must be between 0 and 0; got 1"),
    ],
    ids=["no-shards", "negative-shards", "shard-past-the-last", "negative-shard", "one-shard-not-0"],
)
def test_the_source_refuses_a_shard_outside_the_count_before_any_request(
    shards: int, shard: int, message: str, emulator: Emulator, base_url: str
) -> None:
    with pytest.raises(InvalidOption) as refused:
        codat_source(api_key="k", base_url=base_url, shards=shards, shard=shard)

    assert str(refused.value) == message
    assert emulator.stats()["requests"] == 0


@pytest.mark.parametrize("shard", [-1, 4, 40])
def test_check_shard_is_the_plans_one_check_of_a_shard_number(shard: int) -> None:
    plan = ShardPlan(count=4)

    with pytest.raises(InvalidOption) as refused:
        plan.check_shard(shard)

    assert str(refused.value) == f"shard {shard} is not a shard of the plan: use 0 to 3"
    assert [plan.check_shard(n) for n in range(4)] == [0, 1, 2, 3]


def test_duckdb_shard_files_are_checked_without_a_pipeline(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "codat_shard_00_of_3.duckdb").touch()
    (folder / "codat_shard_01_of_3.duckdb").touch()
    check_plan(ShardPlan(count=3, duckdb_folder=str(folder)))  # the count the folder holds

    with pytest.raises(ShardPlanChanged) as changed:
        check_plan(ShardPlan(count=4, duckdb_folder=str(folder)))

    assert str(changed.value).startswith(
        f"the folder {folder} was loaded in 3 shards (codat_shard_00_of_3 and 1 more), and this run is "
        "sharded 4 ways."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # no pipeline folder was made
