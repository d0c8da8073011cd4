"""A local emulator of the Codat API as docs/codat-api.md describes it, shaped like tests/fixtures/codat/."""
