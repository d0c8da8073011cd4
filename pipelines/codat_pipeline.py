"""The pipeline script for cron: `python pipelines/codat_pipeline.py [flags]` is `codat-sync [flags]`."""

from __future__ import annotations

from connector.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
