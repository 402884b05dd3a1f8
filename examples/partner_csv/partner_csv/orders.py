"""Acme's orders: a CSV file read and checked with pandas, and its rows replacing in PostgreSQL
the rows its earlier version left. No Dagster here: the asset is a thin adapter over it.

    order_id,customer,amount,ordered_on
    A-1001,Globex,120.50,2026-12-01
"""

from typing import IO

import pandas as pd
import psycopg

COLUMNS = ("order_id", "customer", "amount", "ordered_on")

# Bad values named in a message, at most.
NAMED = 5

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS orders (
    partition_key text NOT NULL,   -- the file, as Dagster's partition (its path on the server)
    line integer NOT NULL,         -- where the row is in the file
    order_id text NOT NULL,
    customer text NOT NULL,
    amount numeric NOT NULL,
    ordered_on date NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition_key, line)
)
"""

# Runs of several files start together: one of them creates the table, the others wait for it.
LOCK_TABLE_CREATION = "SELECT pg_advisory_xact_lock(hashtext('partner_csv.orders'))"

DELETE_FILE_ROWS = "DELETE FROM orders WHERE partition_key = %s"

COPY_ROWS = "COPY orders (partition_key, line, order_id, customer, amount, ordered_on) FROM STDIN"


class MalformedOrders(ValueError):
    """The file is not an orders CSV; the message names the file and what is wrong in it."""


def read_orders(data: IO[bytes], where: str) -> pd.DataFrame:
    """The orders of a CSV file: one row per order, with its line in the file, the amount as a
    number and the date as a date. MalformedOrders, naming `where` (the file) and each bad
    value by line and column, if it has other columns or values that are not orders'."""
    try:
        frame = pd.read_csv(data, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MalformedOrders(f"{where}: not a CSV file of orders: {exc}") from exc
    if not isinstance(frame.index, pd.RangeIndex):  # pandas' take on rows longer than the header
        raise MalformedOrders(f"{where}: its rows have more fields than its header")
    found = [str(column).strip() for column in frame.columns]
    if sorted(found) != sorted(COLUMNS):
        raise MalformedOrders(
            f"{where}: its header has the columns {found}; an orders file has {list(COLUMNS)}"
        )
    frame.columns = found
    frame = frame[list(COLUMNS)].apply(lambda column: column.str.strip())
    amounts = pd.to_numeric(frame["amount"], errors="coerce")
    dates = pd.to_datetime(frame["ordered_on"], format="%Y-%m-%d", errors="coerce")
    lines = frame.index + 2  # the header is line 1
    bad = [
        *_bad(lines, frame["order_id"], frame["order_id"] == "", "order_id", "is empty"),
        *_bad(lines, frame["customer"], frame["customer"] == "", "customer", "is empty"),
        *_bad(
            lines,
            frame["amount"],
            amounts.isna() | amounts.abs().eq(float("inf")),
            "amount",
            "is not a number",
        ),
        *_bad(lines, frame["ordered_on"], dates.isna(), "ordered_on", "is not a YYYY-MM-DD date"),
    ]
    if bad:
        bad.sort()
        more = f" and {len(bad) - NAMED} more" if len(bad) > NAMED else ""
        named = "; ".join(problem for _, problem in bad[:NAMED])
        values = "a bad value" if len(bad) == 1 else f"{len(bad)} bad values"
        raise MalformedOrders(f"{where}: {values}: {named}{more}")
    return pd.DataFrame(
        {
            "line": lines,
            "order_id": frame["order_id"],
            "customer": frame["customer"],
            # The text as written (a number, checked above): PostgreSQL's numeric keeps it exact.
            "amount": frame["amount"],
            "ordered_on": dates.dt.date,
        }
    )


def _bad(
    lines: pd.Index, values: pd.Series, wrong: pd.Series, column: str, why: str
) -> list[tuple[int, str]]:
    return [
        (int(line), f"line {line}, {column} {value!r} {why}")
        for line, value in zip(lines[wrong.to_numpy()], values[wrong], strict=True)
    ]


def replace_file_rows(conn: psycopg.Connection, partition_key: str, orders: pd.DataFrame) -> int:
    """The file's rows in the table become `orders`: its earlier version's rows deleted and
    these inserted in one transaction, so readers see either version whole. The number of rows."""
    with conn.transaction():
        conn.execute(LOCK_TABLE_CREATION)
        conn.execute(CREATE_TABLE)
    with conn.transaction():
        conn.execute(DELETE_FILE_ROWS, (partition_key,))
        with conn.cursor().copy(COPY_ROWS) as copy:
            for row in orders.itertuples(index=False):
                copy.write_row((partition_key, *row))
    return len(orders)
