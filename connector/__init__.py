"""Codat Accounting customers connector, built on dlt."""
