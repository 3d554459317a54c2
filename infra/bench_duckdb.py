"""DuckDB's side of infra/bench-duckdb.sh: the same work as Sluice's, timed in-process.

  one-query INPUT LAKE   request_response_times over gateway.requests, written to Delta
  parse INPUT            every topic's JSON parsed once into DuckDB tables (the floor)

Prints one line, `seconds=<s> rows=<n>`, for the shell script to read.
"""
import sys
import time
from pathlib import Path

import duckdb

# The schema of gateway.requests (schemas/gateway.requests.toml), typed as Sluice
# types it, so that DuckDB does not spend time guessing it.
GATEWAY = {
    "request_id": "VARCHAR", "correlation_id": "VARCHAR", "ts": "TIMESTAMPTZ",
    "service": "VARCHAR", "upstream_instance": "VARCHAR", "method": "VARCHAR",
    "route": "VARCHAR", "status": "INTEGER", "duration_ms": "DOUBLE", "user_id": "VARCHAR",
    "org_id": "VARCHAR", "auth_outcome": "VARCHAR", "rate_limited": "BOOLEAN", "bytes_out": "BIGINT",
}

# sql/monitoring/api_performance/request_response_times.sql in DuckDB's dialect.
ONE_QUERY = """
SELECT time_bucket(INTERVAL 1 minute, ts) AS window_start,
       time_bucket(INTERVAL 1 minute, ts) + INTERVAL 1 minute AS window_end,
       service, route,
       count(*) AS requests,
       count(*) FILTER (WHERE status BETWEEN 400 AND 499) AS errors_4xx,
       count(*) FILTER (WHERE status >= 500) AS errors_5xx,
       count(*) FILTER (WHERE rate_limited) AS rate_limited,
       avg(duration_ms) AS avg_duration_ms,
       max(duration_ms) AS max_duration_ms,
       quantile_cont(duration_ms, 0.95) AS p95_duration_ms,
       quantile_cont(duration_ms, 0.95) > 100 AS slo_breached,
       CAST(time_bucket(INTERVAL 1 minute, ts) AS DATE) AS date
FROM read_json(?, format = 'newline_delimited', columns = {columns}, ignore_errors = true)
WHERE ts IS NOT NULL AND service IS NOT NULL AND route IS NOT NULL
GROUP BY ALL
"""


def one_query(input_dir: Path, lake: Path) -> None:
    from deltalake import write_deltalake

    started = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in GATEWAY.items()) + "}"
    files = sorted(str(p) for p in (input_dir / "gateway.requests").glob("*.jsonl"))
    result = con.execute(ONE_QUERY.replace("{columns}", columns), [files]).fetch_arrow_table()
    write_deltalake(str(lake / "monitoring/api_performance/request_response_times"), result, partition_by=["date"])
    print(f"seconds={time.perf_counter() - started:.3f} rows={result.num_rows}")


def parse(input_dir: Path) -> None:
    started = time.perf_counter()
    con = duckdb.connect()
    rows = 0
    for i, topic in enumerate(sorted(p for p in input_dir.iterdir() if p.is_dir())):
        files = sorted(str(p) for p in topic.glob("*.jsonl"))
        con.execute(f"CREATE TABLE t{i} AS SELECT * FROM read_json(?, format = 'newline_delimited', ignore_errors = true)", [files])
        rows += con.execute(f"SELECT count(*) FROM t{i}").fetchone()[0]
    print(f"seconds={time.perf_counter() - started:.3f} rows={rows}")


if __name__ == "__main__":
    match sys.argv[1:]:
        case ["one-query", input_dir, lake]:
            one_query(Path(input_dir), Path(lake))
        case ["parse", input_dir]:
            parse(Path(input_dir))
        case _:
            sys.exit(__doc__)
