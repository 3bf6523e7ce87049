"""Core statements compiled once per dialect and run on the driver's own cursor.

SQLAlchemy's per-execution work (cache-key lookup, result set-up, per-call bind processing
set-up) costs several times what SQLite itself spends on a one-row UPDATE. The hot-path
writes are a handful of fixed statements, so they are compiled once for the store's dialect
(its SQL text, parameter order and each parameter's bind processor) and their rows go straight
to the DBAPI cursor, inside the transaction the SQLAlchemy connection already holds.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, DateTime, Dialect, LargeBinary, Table, bindparam, insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import Compiled
from sqlalchemy.types import TypeEngine


class DriverStatement:
    """One statement, compiled for one dialect; `execute` takes rows as mappings of parameter names.

    `planned_each_run`: PostgreSQL plans it anew at each run, never from a plan kept since an earlier
    one. psycopg prepares a statement run a few times, and PostgreSQL may then keep a plan made
    while its tables were nearly empty (unanalysed: before autovacuum's first pass), which a
    statement whose best plan depends on their size (a claim over a growing backlog) must not."""

    def __init__(
        self, statement: ClauseElement, dialect: Dialect, defaults: Mapping[str, Callable[[], Any]] | None = None,
        *, planned_each_run: bool = False,
    ) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.parameters = _parameters_function(compiled, dialect, defaults or {})
        self._options = {"prepare": False} if planned_each_run and dialect.name == "postgresql" else {}
        #: Most rows a statement of many rows (`fetch_many`, `executemany`: PostgreSQL) takes: its
        #: limit of parameters in a statement, shared among each row's.
        self.rows_max = PARAMETERS_MAX // max(len(compiled.binds), 1)
        #: Rows `executemany` puts in one statement: an INSERT on PostgreSQL as many as a statement
        #: takes; else each row is its own.
        self.rows_per_statement = self.rows_max \
            if compiled.isinsert and dialect.name == "postgresql" and not compiled.effective_returning else 1

    def execute(self, cursor: Any, row: Mapping[str, Any]) -> int:
        """Run it for one row; returns the driver's rowcount."""
        cursor.execute(self.sql, self.parameters(row), **self._options)
        return int(cursor.rowcount)

    def rows(self, cursor: Any, row: Mapping[str, Any]) -> list[Any]:
        """Run it for one row and fetch what it returns (a SELECT, or a statement with RETURNING),
        as the driver gives it: no result processing (SQLite's times stay text)."""
        cursor.execute(self.sql, self.parameters(row), **self._options)
        return list(cursor.fetchall())

    def executemany(self, cursor: Any, rows: list[Mapping[str, Any]]) -> int:
        """Run it for each row, in one call to the driver (on SQLite: prepared once, each row bound
        in C); an INSERT on psycopg as statements of `rows_per_statement` rows each (psycopg's
        executemany costs more Python than PostgreSQL spends on the rows, and a statement is one
        round trip). Returns the rows changed, summed."""
        if self.rows_per_statement == 1:
            cursor.executemany(self.sql, [self.parameters(row) for row in rows])
            return int(cursor.rowcount)
        return sum(self._execute_many(cursor, rows[start:start + self.rows_per_statement]).rowcount
                   for start in range(0, len(rows), self.rows_per_statement))

    def fetch_many(self, cursor: Any, rows: list[Mapping[str, Any]]) -> list[Any]:
        """Run it on PostgreSQL once for all `rows` (no more than `rows_max`), its one row of VALUES
        repeated for each, and fetch what it returns as the driver gives it."""
        return list(self._execute_many(cursor, rows).fetchall())

    def _execute_many(self, cursor: Any, rows: list[Mapping[str, Any]]) -> Any:
        """Run it on PostgreSQL once for all `rows`; the cursor it ran on."""
        sql, names = _many_rows(self.sql, len(rows))
        values: list[Any] = []
        for row in rows:
            parameters = self.parameters(row)
            values.extend([parameters[name] for name in names])
        # psycopg: a raw cursor takes PostgreSQL's own `$n` placeholders as they are, where a cursor
        # parses the text for its `%s` (in Python, for every statement this long).
        raw = _raw_cursor(cursor.connection)
        raw.execute(sql, values, **self._options)
        return raw


def _raw_cursor(connection: Any) -> Any:
    from psycopg import RawCursor  # the postgres extra: only a store on PostgreSQL gets here

    return RawCursor(connection)


#: Most parameters one PostgreSQL statement takes.
PARAMETERS_MAX = 65_535

_NAMED_PARAMETER = re.compile(r"%\((\w+)\)s")


@functools.lru_cache(maxsize=1024)
def _many_rows(sql: str, count: int) -> tuple[str, list[str]]:
    """`... VALUES (%(a)s, %(b)s) ...` as `... VALUES ($1, $2), ($3, $4), ... ...` for `count` rows,
    and the parameter names in the order of each row's placeholders."""
    head, rest = sql.split("VALUES ", 1)
    depth = 0
    for end, char in enumerate(rest):  # the row ends where its parentheses close (casts nest)
        depth += (char == "(") - (char == ")")
        if depth == 0:
            break
    row, tail = rest[:end + 1], rest[end + 1:]
    numbers = itertools.count(1)
    rows = ", ".join(_NAMED_PARAMETER.sub(lambda _: f"${next(numbers)}", row) for _ in range(count))
    return f"{head}VALUES {rows}{tail}", _NAMED_PARAMETER.findall(row)


def _parameters_function(compiled: Compiled, dialect: Dialect,
                         defaults: Mapping[str, Callable[[], Any]]) -> Callable[[Mapping[str, Any]], Any]:
    """`parameters(row)`: the row as the driver takes it, a tuple in order (qmark/format styles) or a
    dict, with `defaults` made for their names, the values written into the statement (`status ==
    "running"`) filled in, and each value through its bind processor. Generated as one expression
    over the statement's parameters: it runs for every row of the hot path, where a loop over the
    names costs more than the driver's insert."""
    names = list(compiled.positiontup or ()) if compiled.positional else list(compiled.binds)
    scope: dict[str, Any] = {}
    values = []
    for i, name in enumerate(names):
        bind = compiled.binds[name]
        if name in defaults:
            scope[f"d{i}"] = defaults[name]
            value = f"d{i}()"
        elif not bind.required:
            scope[f"c{i}"] = bind.effective_value
            value = f"row.get({name!r}, c{i})"
        else:
            value = f"row.get({name!r})"
        if (processor := _bind_processor(bind.type, dialect)) is not None:
            scope[f"p{i}"] = processor
            value = f"p{i}({value})"
        values.append(value if compiled.positional else f"{name!r}: {value}")
    body = f"({', '.join(values)},)" if compiled.positional else f"{{{', '.join(values)}}}"
    return eval(f"lambda row: {body}", scope)  # noqa: S307 - text made above from compiled names


def _bind_processor(type_: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    """The type's bind processor on `dialect`; on SQLite, bytes as they are and times formatted in C
    (the same text as SQLAlchemy's own processors write)."""
    impl = type_.dialect_impl(dialect)
    processor = impl.bind_processor(dialect)
    if dialect.name == "sqlite" and processor is not None:
        if isinstance(type_, LargeBinary):
            return lambda value, wrap=processor: value if type(value) is bytes else wrap(value)
        # Only where SQLite's DateTime writes its default text, `YYYY-MM-DD HH:MM:SS.ffffff`.
        if isinstance(type_, DateTime) and getattr(impl, "_storage_format", None) == sqlite.DATETIME._storage_format:
            # isoformat leaves out a zero fraction, and with a timespec costs twice as much
            return lambda value, wrap=processor: (value.isoformat(" ")[:26] if type(value) is datetime
                                                  and value.microsecond else wrap(value))
    return processor


def driver_cursor(conn: Connection) -> Any:
    """A DBAPI cursor inside `conn`'s transaction (begun first if it has not been)."""
    if not conn.in_transaction():
        conn.begin()
    return conn.connection.cursor()


@functools.cache
def insert_statement(table: Table, columns: frozenset[str], dialect: Dialect) -> DriverStatement:
    """An INSERT of `columns` into `table`, plus the Python-side defaults of the others, compiled once."""
    defaults: dict[str, Callable[[], Any]] = {}
    for column in table.columns:
        default = column.default
        if column.key in columns or default is None:
            continue
        if default.is_scalar:
            defaults[column.key] = lambda value=default.arg: value  # type: ignore[attr-defined]
        elif default.is_callable:
            defaults[column.key] = lambda make=default.arg: make(None)  # type: ignore[attr-defined]
    names = sorted(columns | defaults.keys())
    # inline(): no `RETURNING id` for an autoincrement key on PostgreSQL, which nobody here reads.
    return DriverStatement(insert(table).inline().values({name: bindparam(name) for name in names}), dialect, defaults)


def insert_rows(conn: Connection, table: Table, rows: list[Mapping[str, Any]]) -> None:
    """Insert rows that all have the same columns, in one executemany on the driver."""
    if rows:
        insert_statement(table, frozenset(rows[0]), conn.dialect).executemany(driver_cursor(conn), rows)
