"""Reads each lake table the way analysts outside Sluice do: DuckDB's Delta extension and
polars, each compared row for row with delta-rs's own reader (deltalake with pyarrow).

    readers.py LAKE PATH...     # PATH as in the lake, e.g. analytics/learner/ai_usage

Prints one JSON line per table ({"path", "rows"}) for the Rust test to compare with what
it read itself, and exits 1 naming every table a reader got wrong.
"""
import datetime
import decimal
import json
import os
import sys

import deltalake
import duckdb
import polars


def canonical(value):
    """One spelling per value, whichever reader produced it."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, (datetime.date, decimal.Decimal)):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in sorted(value.items())}
    return value


def rows(table):
    """The table's rows as sorted JSON texts, columns by name."""
    names = sorted(table.column_names)
    columns = [table.column(n).to_pylist() for n in names]
    return names, sorted(json.dumps([canonical(c[i]) for c in columns]) for i in range(table.num_rows))


def duckdb_connection():
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    try:
        con.execute("LOAD delta")
        return con
    except duckdb.Error:
        pass
    for p in sys.path:  # DuckDB's signed Delta extension, shipped on PyPI as duckdb-ext-delta
        ext = os.path.join(p, "duckdb_ext", "extensions")
        if os.path.isdir(ext):
            con.execute(f"SET extension_directory = '{ext}'")
            con.execute("LOAD delta")
            return con
    raise SystemExit("DuckDB's delta extension is not installed (pip install duckdb-ext-delta)")


def main():
    lake, paths = sys.argv[1], sys.argv[2:]
    con = duckdb_connection()
    problems = []
    for path in paths:
        location = os.path.join(lake, path)
        expected_names, expected = rows(deltalake.DeltaTable(location).to_pyarrow_table())
        read = {
            "DuckDB": lambda: con.execute(f"SELECT * FROM delta_scan('{location}')").fetch_arrow_table(),
            "polars": lambda: polars.read_delta(location).to_arrow(),
        }
        for reader, table in read.items():
            try:
                names, got = rows(table())
            except Exception as e:  # a reader that cannot read the table is the finding
                problems.append(f"{path}: {reader} cannot read it: {e}")
                continue
            if names != expected_names:
                problems.append(f"{path}: {reader} reads columns {names}, deltalake {expected_names}")
            elif got != expected:
                missing = sorted(set(expected) - set(got))[:3]
                extra = sorted(set(got) - set(expected))[:3]
                problems.append(f"{path}: {reader} reads {len(got)} rows, deltalake {len(expected)}; "
                                f"e.g. missing {missing}, extra {extra}")
        print(json.dumps({"path": path, "rows": len(expected)}))
    for p in problems:
        print(p, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
