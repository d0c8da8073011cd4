"""Which shard a company belongs to, and what each shard's pipeline, staging and file are called.

Pure naming, no I/O: the source filters its companies with `shard_of`, and `connector.shards`
builds pipelines from a `ShardPlan`. A company's shard depends only on its id and the shard
count, so it is the same on every machine, in every process, in every run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.defaults import DEFAULT_REQUESTS_PER_MINUTE, DEFAULT_SHARD_COUNT, DEFAULT_SHARDS_AT_ONCE
from connector.errors import InvalidOption

MAX_SHARDS = 1000
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def shard_of(company_id: str, shards: int) -> int:
    """The shard (0 to `shards` - 1) of a company: a hash of its id, not Python's salted `hash`."""
    digest = hashlib.blake2b(company_id.strip().lower().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


@dataclass(frozen=True)
class ShardPlan:
    """How an account is split into shards, and where each shard's data goes.

    Attributes:
        count: How many shards. Fixed once data is loaded: `connector.shards` refuses a run
            whose count differs from the one the dataset was loaded with.
        prefix: The start of every shard's pipeline name (`codat_shard_07_of_16`).
        dataset_name: The dataset every shard loads into.
        destination: A dlt destination name. `duckdb` gives each shard its own file in
            `duckdb_folder` (DuckDB takes one writer per file); any other destination gets
            every shard in one dataset, each with its own staging dataset.
        duckdb_folder: Where the shard files of the `duckdb` destination go.
        credentials: The destination's credentials (a connection string, ...); None: dlt's
            configuration (`DESTINATION__POSTGRES__CREDENTIALS`, `.dlt/secrets.toml`).
        pipelines_dir: dlt's working folder for the shard pipelines; None: dlt's default.
        shards_at_once: Shards that run at the same time from one egress IP (the limit of the
            orchestrator's pool): each shard paces itself to its part of the IP's limit.
        requests_per_minute: Codat's limit per egress IP, shared by the shards running at once.
    """

    count: int = DEFAULT_SHARD_COUNT
    prefix: str = "codat"
    dataset_name: str = "codat"
    destination: str = "duckdb"
    duckdb_folder: str = "codat_shards"
    credentials: Any = field(default=None, repr=False)  # may hold a password
    pipelines_dir: str | None = None
    shards_at_once: int = DEFAULT_SHARDS_AT_ONCE
    requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise InvalidOption(f"the shard count must be between 1 and {MAX_SHARDS}; got {self.count}")
        for name, value in (("prefix", self.prefix), ("dataset_name", self.dataset_name)):
            if not _NAME.fullmatch(value):
                raise InvalidOption(
                    f"the shard plan's {name} must be lower-case letters, digits and _ "
                    f"starting with a letter; got {value!r}"
                )
        if self.shards_at_once < 1:
            raise InvalidOption(f"shards_at_once must be at least 1; got {self.shards_at_once}")
        if self.shard_requests_per_minute() < 1:
            raise InvalidOption(
                f"requests_per_minute ({self.requests_per_minute}) leaves less than one request a "
                f"minute to each of the {min(self.shards_at_once, self.count)} shards running at once"
            )

    @property
    def per_file(self) -> bool:
        """Whether each shard has a DuckDB file of its own (else one dataset holds them all)."""
        return self.destination == "duckdb"

    def key(self, shard: int) -> str:
        """The shard's partition key: its number, zero-padded to sort (`07` of 16)."""
        return f"{shard:0{max(2, len(str(self.count - 1)))}d}"

    def partition_keys(self) -> list[str]:
        """Every shard's key, in order."""
        return [self.key(shard) for shard in range(self.count)]

    def shard(self, key: str) -> int:
        """The shard a partition key names.

        Raises:
            InvalidOption: The key names no shard of this plan.
        """
        if key not in self.partition_keys():
            raise InvalidOption(f"{key!r} is not a shard of this plan: use 00 to {self.key(self.count - 1)}")
        return self.check_shard(int(key))

    def check_shard(self, shard: int) -> int:
        """`shard` if it is a shard of this plan.

        Raises:
            InvalidOption: It is not one (0 to `count` - 1).
        """
        if not 0 <= shard < self.count:
            raise InvalidOption(f"shard {shard} is not a shard of the plan: use 0 to {self.count - 1}")
        return shard

    def shard_of(self, company_id: str) -> int:
        """The shard a company belongs to in this plan."""
        return shard_of(company_id, self.count)

    def pipeline_name(self, shard: int) -> str:
        """The shard's pipeline name, which carries the shard count (`codat_shard_07_of_16`)."""
        return f"{self.prefix}_shard_{self.key(shard)}_of_{self.count}"

    def staging_layout(self, shard: int) -> str:
        """The shard's `staging_dataset_name_layout`: a staging dataset no other shard touches.

        dlt's default (`%s_staging`) is one staging dataset for every pipeline of a dataset,
        and a merge there truncates and copies rows of the other shards (dlt issue 4297).
        """
        return f"%s_staging_shard_{self.key(shard)}_of_{self.count}"

    def duckdb_file(self, shard: int) -> Path:
        """The shard's DuckDB file (destination `duckdb`), absolute."""
        return (Path(self.duckdb_folder).expanduser() / f"{self.pipeline_name(shard)}.duckdb").resolve()

    def parse(self, pipeline_name: str) -> tuple[int, int] | None:
        """(shard, count) of a shard pipeline name with this plan's prefix, else None."""
        found = re.fullmatch(rf"{re.escape(self.prefix)}_shard_(\d+)_of_(\d+)", pipeline_name)
        return (int(found.group(1)), int(found.group(2))) if found else None

    def shard_requests_per_minute(self) -> int:
        """Each running shard's part of the egress IP's limit (no more shards run than there are)."""
        return self.requests_per_minute // min(self.shards_at_once, self.count)
