"""The WHERE clause of the list endpoints' equality filters, bound, never formatted."""

from __future__ import annotations

from typing import Any

from psycopg import sql


def equal(
    filters: dict[str, Any], table: str | None = None
) -> tuple[list[sql.Composable], list[Any]]:
    """``column = %s`` for every filter whose value is given, with its parameters; the
    conditions start with ``true`` so that they always join into a valid clause."""
    conditions: list[sql.Composable] = [sql.SQL("true")]
    params: list[Any] = []
    for column, value in filters.items():
        if value is not None:
            name = sql.Identifier(table, column) if table else sql.Identifier(column)
            conditions.append(sql.SQL("{} = %s").format(name))
            params.append(value)
    return conditions, params
