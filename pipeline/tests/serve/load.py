#!/usr/bin/env python3
"""Load on `sluice serve` with a hostile client among the others.

64 well-behaved clients, each with its own identity and connection, for
--seconds: dashboard pollers (the page's version poll, and all its charts when
asked), REST callers (the analytics API for a learner) and psql-style analysts
(a point lookup and a GROUP BY over the simple and the extended protocol), each
pausing --think seconds between requests. Their latencies are measured twice,
after --warmup seconds:
alone, then with one hostile user running beside them for the same time:

  * the statements that used to abort the server (a 2,000-term chain, 2,000 ORs,
    a 4 MB literal);
  * three-way cross joins stopped by their statement_timeout, back to back;
  * 200 sockets held open without logging in, renewed as they are closed, and
    garbage bytes.

It prints p50 / p99 per kind of client for both runs, and the ratio of the p99s.

  load.py --lake DIR --pg-port P --http-port H --secret S [--seconds 180] [--clients 64]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clients  # noqa: E402

TIMES = "monitoring.api_performance.request_response_times"
ENGAGEMENT = "analytics.learner.engagement_daily"


def percentile(values, q):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Run:
    def __init__(self, args, learners):
        self.args, self.learners = args, learners
        self.latencies = {"dashboard": [], "rest": [], "sql": []}
        self.errors = {"dashboard": 0, "rest": 0, "sql": 0}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        # The first seconds warm caches and open connections: not measured.
        self.measured_from = time.monotonic() + args.warmup

    def record(self, kind, seconds, ok):
        if time.monotonic() - seconds < self.measured_from:
            return
        with self.lock:
            if ok:
                self.latencies[kind].append(seconds * 1000)
            else:
                self.errors[kind] += 1

    def http(self, path, token):
        request = urllib.request.Request(f"http://127.0.0.1:{self.args.http_port}{path}", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def dashboard(self, n):
        token = clients.token_for(self.args.secret, clients.Identity("a", f"analyst-{n}", "analyst"))
        rng = random.Random(n)
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                path = "/api/v1/dashboard/charts?range=hour&section=platform" if rng.random() < 0.2 else "/api/v1/dashboard/version"
                self.http(path, token)
                self.record("dashboard", time.monotonic() - started, True)
            except Exception:  # noqa: BLE001
                self.record("dashboard", 0, False)
            self.stop.wait(self.args.think * rng.uniform(0.5, 1.5))

    def rest(self, n):
        user = self.learners[n % len(self.learners)]
        token = clients.token_for(self.args.secret, clients.Identity("l", user, "learner"))
        rng = random.Random(n)
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.http("/api/v1/analytics/learner", token)
                self.record("rest", time.monotonic() - started, True)
            except Exception:  # noqa: BLE001
                self.record("rest", 0, False)
            self.stop.wait(self.args.think * rng.uniform(0.5, 1.5))

    def sql(self, n):
        ident = clients.Identity("a", f"sql-analyst-{n}", "analyst")
        rng = random.Random(n)
        conn = None
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if conn is None or conn.closed:
                    conn = clients.Pg(self.args.pg_port, self.args.secret).connect(ident)
                if rng.random() < 0.5:
                    conn.execute(f"SELECT date, sum(interactions) FROM {ENGAGEMENT} GROUP BY date ORDER BY date").fetchall()
                else:
                    conn.execute(f"SELECT * FROM {ENGAGEMENT} WHERE user_id = %s", (rng.choice(self.learners),), prepare=True).fetchall()
                self.record("sql", time.monotonic() - started, True)
            except Exception:  # noqa: BLE001
                self.record("sql", 0, False)
                conn = None
            self.stop.wait(self.args.think * rng.uniform(0.5, 1.5))
        if conn is not None:
            conn.close()

    def hostile(self):
        psycopg = clients._psycopg()
        ident = clients.Identity("m", "mallory", "analyst")
        pg = clients.Pg(self.args.pg_port, self.args.secret)
        attacks = [
            "SELECT 1" + "+1" * 2000,
            f"SELECT count(*) FROM {TIMES} WHERE " + " OR ".join(f"route = 'r{i}'" for i in range(2000)),
            "SELECT '" + "x" * (4 << 20) + "'",
            f"SET statement_timeout = 5000; SELECT count(*), max(a.requests + b.requests + c.requests) FROM {TIMES} a, {TIMES} b, {TIMES} c",
        ]
        held = []
        while not self.stop.is_set():
            for sql in attacks:
                try:
                    with pg.connect(ident) as conn:
                        conn.execute(sql)
                except psycopg.Error:
                    pass
                # Sockets that never log in, renewed as the server closes them, and garbage.
                held = [s for s in held if not is_closed(s)]
                while len(held) < 200:
                    try:
                        held.append(socket.create_connection(("127.0.0.1", self.args.pg_port), timeout=1))
                    except OSError:
                        break
                try:
                    with socket.create_connection(("127.0.0.1", self.args.pg_port), timeout=1) as s:
                        s.sendall(os.urandom(4096))
                except OSError:
                    pass
                if self.stop.is_set():
                    break
        for s in held:
            s.close()

    def go(self, with_hostile):
        threads = []
        kinds = [self.dashboard, self.rest, self.sql]
        for n in range(self.args.clients):
            threads.append(threading.Thread(target=kinds[n % 3], args=(n,), daemon=True))
        if with_hostile:
            threads += [threading.Thread(target=self.hostile, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(self.args.warmup + self.args.seconds)
        self.stop.set()
        for t in threads:
            t.join(timeout=60)


def is_closed(sock):
    try:
        sock.setblocking(False)
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", required=True)
    parser.add_argument("--pg-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=10, help="seconds of each run not measured, while caches warm")
    parser.add_argument("--think", type=float, default=1.0, help="mean pause between a client's requests, seconds")
    args = parser.parse_args()
    from deltalake import DeltaTable
    engagement = DeltaTable(os.path.join(args.lake, "analytics/learner/engagement_daily")).to_pyarrow_table(columns=["user_id"])
    learners = sorted(set(engagement.column("user_id").to_pylist()) - {None})[:200]
    runs = {}
    for name, hostile in [("alone", False), ("with a hostile client", True)]:
        run = Run(args, learners)
        run.go(hostile)
        runs[name] = run
        print(f"== {name}: {args.clients} clients, {args.seconds:.0f} s")
        for kind, values in run.latencies.items():
            print(f"   {kind:9} {len(values):6} requests  p50 {percentile(values, 0.5):7.1f} ms  p99 {percentile(values, 0.99):7.1f} ms  errors {run.errors[kind]}")
    print("== p99 with the hostile client over p99 alone")
    worst = 0.0
    for kind in ["dashboard", "rest", "sql"]:
        alone, hostile = (percentile(runs[n].latencies[kind], 0.99) for n in runs)
        ratio = hostile / alone if alone else float("nan")
        worst = max(worst, ratio)
        print(f"   {kind:9} {ratio:.2f}x")
    print(f"worst ratio {worst:.2f}x (aim: at most 2x)")


if __name__ == "__main__":
    main()
