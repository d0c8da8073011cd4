"""Dagster definitions for `dagster dev -f pipelines/dagster_defs.py` (install `.[dagster]` first).

The shard plan comes from dlt's configuration, like the source's options: `[shards]` in
`.dlt/config.toml`, or `SHARDS__COUNT`, `SHARDS__DESTINATION`, ... in the environment
(`connector.shards.plan_from_config`). The API key and address are the source's own settings
(`SOURCES__CODAT__API_KEY`, `SOURCES__CODAT__BASE_URL`), a warehouse's credentials dlt's
(`DESTINATION__POSTGRES__CREDENTIALS`).
"""

from __future__ import annotations

from connector.orchestration import codat_definitions

defs = codat_definitions()
