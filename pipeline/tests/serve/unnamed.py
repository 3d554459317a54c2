#!/usr/bin/env python3
"""One psycopg connection sending one statement again and again, unnamed, over the
extended protocol (Parse, Bind, Execute each time), as psycopg and pgjdbc do by
default: for each parameter read from stdin, one line, it prints the first
column of the first row (or `error: ...`) and flushes, so that the test can
change the lake between two executions on the same connection.

  unnamed.py --port P --user U --token T --sql 'SELECT ... WHERE x = %s'
"""

import argparse
import sys

import psycopg

args = argparse.ArgumentParser()
for flag in ("--port", "--user", "--token", "--sql"):
    args.add_argument(flag, required=True)
args = args.parse_args()
conn = psycopg.connect(host="127.0.0.1", port=int(args.port), dbname="lake", user=args.user, password=args.token,
                       sslmode="disable", gssencmode="disable", autocommit=True, connect_timeout=10)
conn.prepare_threshold = None  # never a named statement
for line in sys.stdin:
    try:
        with conn.cursor() as cur:
            cur.execute(args.sql, (line.rstrip("\n"),))
            row = cur.fetchone()
        print(row[0] if row else "no row", flush=True)
    except psycopg.Error as e:
        print(f"error: {e}".replace("\n", " "), flush=True)
