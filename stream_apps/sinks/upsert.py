"""SQL for the sinks' guarded upserts: stage rows with COPY, then one INSERT ... ON CONFLICT
that only replaces a stored row with a newer one (by a rank expression) that differs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from psycopg import sql


def columns(names: Iterable[str], table: str | None = None) -> sql.Composed:
    if table is None:
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)
    return sql.SQL(", ").join(sql.Identifier(table, n) for n in names)


@dataclass(frozen=True)
class GuardedUpsert:
    """``table`` keyed by ``key``; a conflicting row is replaced when the incoming row's
    ``rank`` columns are >= the stored ones and its values differ (a replay writes nothing).
    Rows are staged in the temporary table ``<table>_in`` (created per transaction)."""

    table: str
    key: Sequence[str]
    values: Sequence[str]
    rank: Sequence[str]

    @property
    def staging(self) -> str:
        return f"{self.table}_in"

    def create_staging(self) -> sql.Composed:
        return sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        ).format(sql.Identifier(self.staging), sql.Identifier(self.table))

    def copy(self) -> sql.Composed:
        return sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(self.staging), columns([*self.key, *self.values])
        )

    def upsert(self) -> sql.Composed:
        return sql.SQL(
            "INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging}"
            " ON CONFLICT ({key}) DO UPDATE SET ({values}) = ({incoming})"
            " WHERE ({incoming_rank}) >= ({stored_rank})"
            " AND ({incoming}) IS DISTINCT FROM ({stored})"
        ).format(
            table=sql.Identifier(self.table),
            staging=sql.Identifier(self.staging),
            columns=columns([*self.key, *self.values]),
            key=columns(self.key),
            values=columns(self.values),
            incoming=columns(self.values, "excluded"),
            stored=columns(self.values, self.table),
            incoming_rank=columns(self.rank, "excluded"),
            stored_rank=columns(self.rank, self.table),
        )
