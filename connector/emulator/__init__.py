"""A local emulator of the Codat API, faithful to ../shared/codat/CONTRACT.md."""
