"""Database access: engines, sessions and the shared declarative base."""

from meterline.db.base import Base, metadata
from meterline.db.engine import Database, make_engine

__all__ = ["Base", "Database", "make_engine", "metadata"]
