"""Deliveries from a SQL database: a table or a query, through the same mapping as a file.

Operators keep their deliveries in a database, not in files. ``doorstep ingest URL --format sql
--query ...`` reads them with SQLAlchemy (any dialect whose driver is installed: SQLite comes with
Python, PostgreSQL takes ``psycopg``, the ``sql`` extra) and validates them row by row like a file,
so a bad row is quarantined and reported, not fatal. Credentials come from the URL or from the
driver's own environment (for PostgreSQL ``PGPASSWORD`` or ``~/.pgpass``); messages never show
a password.
"""

from __future__ import annotations

import re

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from features.adapters.tabular import ColumnMapping, map_frame
from features.coerce import Adapted

# a table, optionally schema-qualified: anything else is run as a query
TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_database_url(source: str) -> bool:
    """``dialect[+driver]://...``, the form SQLAlchemy reads (a file path has no scheme)."""
    return bool(SCHEME.match(source))


def redact(url: str) -> str:
    """The URL as it may be printed or logged: the password masked."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"//[^@/]*@", "//***@", url)


def read_sql_source(
    url: str, query: str, *, mapping: ColumnMapping | None = None, tz: str
) -> Adapted:
    """The rows of ``query`` (a table name or a SELECT statement) at ``url`` in contract
    columns, aligned with the rows as they came. Errors name the URL (redacted), the query and
    what went wrong, as ``ValueError``."""
    query = query.strip()
    shown = redact(url)
    if not query:
        raise ValueError("--query: give a table name or a SELECT statement")
    try:
        engine = sa.create_engine(url)
    except ImportError as exc:  # the dialect is known, its driver is not installed
        raise ValueError(
            f"{shown}: the database driver is not installed ({exc}); for PostgreSQL install "
            "the 'sql' extra (pip install 'doorstep[sql]')"
        ) from exc
    except ArgumentError as exc:
        raise ValueError(f"{shown}: not a database URL SQLAlchemy can open ({exc})") from exc
    try:
        with engine.connect() as conn:
            if TABLE_NAME.match(query):
                schema, _, table = query.rpartition(".")
                if not sa.inspect(conn).has_table(table, schema=schema or None):
                    raise ValueError(f"{shown}: no table {query!r}")
                raw = pd.read_sql_table(table, conn, schema=schema or None)
            else:
                # as the driver gets it: text() would read ':name' in the SQL as a parameter
                raw = pd.read_sql_query(query, conn)
    except (SQLAlchemyError, pd.errors.DatabaseError) as exc:
        # pandas wraps the SQLAlchemy error, which wraps the driver's: name the driver's
        root = exc.__cause__ if isinstance(exc, pd.errors.DatabaseError) and exc.__cause__ else exc
        cause = getattr(root, "orig", None) or root
        raise ValueError(f"{shown}: reading {query!r} failed: {cause}") from exc
    finally:
        engine.dispose()
    return map_frame(raw, mapping, tz=tz, where=f"{shown} ({query})")
