"""The SQLite decision log: schema, background writer, reads for replay and training."""

from .schema import SCHEMA_VERSION, open_database

__all__ = ["SCHEMA_VERSION", "open_database"]
