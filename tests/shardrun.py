"""Materialize one partition of the Dagster shard assets in this process, as a worker would.

    python -m tests.shardrun SPEC.json KEY [TARGET N]

SPEC.json holds `plan` (`ShardPlan` fields) and `source` (`codat_source` options). KEY is a
shard's partition key (`00`), or `dataset` for the `codat/dataset` asset. With TARGET and N the
process SIGKILLs itself on entering the N-th call of TARGET (`tests/killpoint.py`). The last
line printed is a JSON object: `success`, the shard's materialization `metadata`, the `error`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import dagster as dg

from connector.orchestration import DATASET_ASSET, codat_definitions
from connector.placement import ShardPlan
from tests.killpoint import install


def materialize(spec: dict[str, Any], key: str) -> dict[str, Any]:
    """Materialize `key` of the definitions `spec` describes; what happened, as JSON-ready values."""
    defs = codat_definitions(ShardPlan(**spec["plan"]), spec["source"])
    assets = list(defs.assets or [])
    if key == "dataset":
        result = dg.materialize(assets, selection=[DATASET_ASSET], raise_on_error=False)
        node = "codat__dataset"
    else:
        shards = [a for a in assets if isinstance(a, dg.AssetsDefinition) and DATASET_ASSET not in a.keys]
        result = dg.materialize(assets, partition_key=key, selection=shards, raise_on_error=False)
        node = "codat_shards"
    metadata: dict[str, Any] = {}
    for event in result.asset_materializations_for_node(node)[:1]:
        metadata = {name: value.value for name, value in event.metadata.items()}
    errors = []
    for event in result.all_events:
        error = event.step_failure_data.error if event.is_step_failure else None
        while error is not None:  # Dagster wraps the asset's exception: its causes say what happened
            errors.append(error.message.strip())
            error = error.cause
    return {"success": result.success, "metadata": metadata, "error": "\n".join(errors)}


def main(argv: list[str]) -> int:
    """Run one materialization; print its outcome as the last line."""
    spec = json.loads(Path(argv[0]).read_text())
    if len(argv) >= 4:
        install(argv[2], int(argv[3]))
    outcome = materialize(spec, argv[1])
    print(json.dumps(outcome, default=str))
    return 0 if outcome["success"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
