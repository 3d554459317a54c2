#!/usr/bin/env python3
"""A benchmark (not a test) of `sluice serve`: what a dashboard waits for.

Against a running server (infra/bench-serve.sh starts one and runs this), it measures
dashboard-shaped queries over the Postgres wire protocol (psycopg 3, one client), the
same queries through `sluice query` (one process per query) and through DuckDB
in-process on the same Delta tables, the throughput curve of 1, 4 and N concurrent
clients, and what row-level security costs per role. Every engine's answers are
compared; a difference is printed (and the exit code is 1). It prints Markdown.

Protocols, deliberately: the connections set prepare_threshold=None, so psycopg never
prepares on its own: a query without parameters goes as one simple-protocol Query
message, one with parameters as an unnamed Parse/Bind/Describe/Execute (extended).
The "prepared" rows use a connection with prepare_threshold=0 and prepare=True: a
named statement parsed once, then Bind/Execute only.

  SLUICE_JWT_SECRET=... python bench.py --lake DIR --pg-port P --binary PATH
"""

import argparse, base64, datetime as dt, hashlib, hmac, json, math, os, platform
import subprocess, sys, threading, time, urllib.parse

RRT = "monitoring.api_performance.request_response_times"
ENGAGEMENT = "analytics.learner.engagement_daily"
VELOCITY = "analytics.learner.velocity_daily"
TABLES = {"rrt": RRT, "engagement": ENGAGEMENT, "velocity": VELOCITY}
QUERIES = {  # label -> (what it is, SQL with {table} placeholders and %s for the user)
    "a": ("operator board: requests and p95 per hour and service",
          "SELECT date_trunc('hour', window_start) AS hour, service, sum(requests) AS requests, "
          "max(p95_duration_ms) AS p95 FROM {rrt} GROUP BY 1, 2 ORDER BY 1, 2"),
    "b": ("engagement per day",
          "SELECT date, sum(interactions), avg(avg_latency_ms) FROM {engagement} GROUP BY date ORDER BY date"),
    "c": ("point lookup: one user's velocity rows", "SELECT * FROM {velocity} WHERE user_id = %s"),
}
ROWS, MISMATCHES = [], []


def sql_for(label, name_of):
    return QUERIES[label][1].format(**{key: name_of(t) for key, t in TABLES.items()})


def jwt(secret, sub, role):
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub, "role": role, "exp": int(time.time()) + 6 * 3600}).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def connect(args, sub, role, prepared=False):
    import psycopg
    conn = psycopg.connect(host="127.0.0.1", port=args.pg_port, dbname="lake", user=sub,
                           password=jwt(args.secret, sub, role), sslmode="disable",
                           gssencmode="disable", autocommit=True, connect_timeout=10)
    conn.prepare_threshold = 0 if prepared else None
    return conn


def pct(samples, q):
    s = sorted(samples)
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))] if s else float("nan")


def record(what, query, via, ident, clients, lat_ms, rows, qps=None, cpu=""):
    ROWS.append(dict(what=what, query=query, via=via, ident=ident, clients=clients, n=len(lat_ms),
                     p50=pct(lat_ms, .5), p95=pct(lat_ms, .95), p99=pct(lat_ms, .99), qps=qps, rows=rows, cpu=cpu))


def cpu_seconds(pid=None):
    """User+system CPU seconds of the server (pid), this process (every thread) or (pid 0) the machine."""
    if pid is None:
        return sum(os.times()[:2])
    if pid == 0:  # /proc/stat's cpu line: user nice system idle iowait irq softirq steal
        user, nice, system, _, _, irq, softirq, steal = map(int, open("/proc/stat").readline().split()[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn, runs, warmup):
    for _ in range(warmup):
        result = fn()
    lat = []
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        lat.append((time.perf_counter() - t) * 1000)
    return lat, result


def pg_run(conn, sql, params=None, prepare=None):
    with conn.cursor() as cur:
        cur.execute(sql, params, prepare=prepare) if params is not None or prepare else cur.execute(sql)
        return cur.fetchall()


# -- value normalisation, so that three engines' answers can be compared ---------------
def norm(v):
    if isinstance(v, str) and len(v) > 10 and v[4] == "-" and v[10] == "T":
        v = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))  # sluice query's JSON
    if isinstance(v, dt.datetime):
        return (v.astimezone(dt.timezone.utc).replace(tzinfo=None) if v.tzinfo else v).isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    return float(v) if type(v).__name__ == "Decimal" else v


def same(x, y):
    if isinstance(x, float) or isinstance(y, float):
        return isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isclose(x, y, rel_tol=1e-9)
    return x == y


def compare(label, ordered, answers):
    """answers: engine -> rows; checked against the first engine's."""
    canon = {e: [tuple(norm(v) for v in r) for r in rows] for e, rows in answers.items()}
    if not ordered:
        canon = {e: sorted(rows, key=repr) for e, rows in canon.items()}
    (base, want), *others = canon.items()
    for engine, got in others:
        bad = [i for i, (a, b) in enumerate(zip(want, got)) if len(a) != len(b) or not all(map(same, a, b))]
        if len(want) != len(got) or bad:
            i = bad[0] if bad else min(len(want), len(got))
            MISMATCHES.append(f"query ({label}): {engine} gave {len(got)} rows, {base} {len(want)}; first difference "
                              f"at row {i}: {got[i] if i < len(got) else None} vs {want[i] if i < len(want) else None}")


# -- the measurements --------------------------------------------------------------------
def pick_identities(conn):
    """A learner with velocity rows, one of their trainers, their organisation's admin."""
    users = {u: (role, org) for u, role, org in pg_run(conn, "SELECT user_id, role, org_id FROM services.directory.users")}
    trainers = {}
    for t, s in sorted(pg_run(conn, "SELECT trainer_id, student_id FROM services.directory.teaching_assignments")):
        if users.get(t, ("",))[0] == "trainer":
            trainers.setdefault(s, t)
    admins = {}
    for u, (role, org) in sorted(users.items()):
        if role == "org_admin":
            admins.setdefault(org, u)
    counts = pg_run(conn, f"SELECT user_id, count(*) FROM {VELOCITY} GROUP BY user_id")
    fits = sorted((-n, u) for u, n in counts if users.get(u, ("",))[0] == "learner"
                  and u in trainers and users[u][1] in admins)
    if not fits:
        raise SystemExit("no learner with velocity rows, a trainer and an org admin in this lake")
    learner = fits[0][1]
    return {"analyst": ("bench-analyst", "analyst"), "learner": (learner, "learner"),
            "trainer": (trainers[learner], "trainer"), "org_admin": (admins[users[learner][1]], "org_admin")}


def pg_latency(args, user):
    answers = {}
    plain, prep = connect(args, "bench-analyst", "analyst"), connect(args, "bench-analyst", "analyst", prepared=True)
    for label, params in (("a", None), ("b", None), ("c", (user,))):
        sql = sql_for(label, lambda t: t)
        for proto, conn, prepare in (("simple" if params is None else "extended, unnamed", plain, None),
                                     ("prepared", prep, True)):
            if label == "a" and proto == "prepared":
                continue
            lat, rows = timed(lambda: pg_run(conn, sql, params, prepare), args.runs, args.warmup)
            record("latency", label, f"pg-wire, {proto}", "analyst", 1, lat, len(rows))
            answers.setdefault(label, {})[proto] = rows
        compare(f"{label}, by protocol", label != "c", answers[label])
    plain.close(), prep.close()
    return {label: next(iter(by_proto.values())) for label, by_proto in answers.items()}


def cli_latency(args, user):
    answers = {}
    for label in QUERIES:
        sql = sql_for(label, lambda t: t).replace("%s", "'" + user.replace("'", "''") + "'")
        cmd = [args.binary, "query", "--lake", args.lake, "--format", "json", sql]
        def once():
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"sluice query failed ({out.returncode}): {out.stderr.strip()}")
            return [tuple(json.loads(line).values()) for line in out.stdout.splitlines() if line.strip()]
        lat, rows = timed(once, args.cli_runs, 1)
        record("latency", label, "sluice query (a process: start, open lake, answer)", "-", 1, lat, len(rows))
        answers[label] = rows
    return answers


def duckdb_scan(args):
    """(connection, how a table is named in DuckDB's SQL, what was used)."""
    import duckdb
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    path = lambda t: os.path.join(args.lake, *t.split("."))
    try:
        con.execute("INSTALL delta; LOAD delta")
        return con, lambda t: f"delta_scan('{path(t)}')", "delta extension (INSTALL delta)"
    except duckdb.Error:
        pass
    for p in sys.path:  # the same signed extension, shipped on PyPI as duckdb-ext-delta
        ext = os.path.join(p, "duckdb_ext", "extensions")
        if os.path.isdir(ext):
            try:
                con.execute(f"SET extension_directory = '{ext}'; LOAD delta")
                return con, lambda t: f"delta_scan('{path(t)}')", "delta extension (pip duckdb-ext-delta)"
            except duckdb.Error:
                pass
    removed = []
    def live(t):  # the table's files from its Delta log: adds less removes
        log, files = os.path.join(path(t), "_delta_log"), {}
        commits = sorted(f for f in os.listdir(log) if f.endswith(".json"))
        if not commits or not commits[0].startswith("0" * 20):
            raise SystemExit(f"{log}: no log from version 0 (a checkpoint); cannot list the files without the delta extension")
        for c in commits:
            for action in map(json.loads, open(os.path.join(log, c))):
                if "add" in action:
                    files[action["add"]["path"]] = True
                elif "remove" in action:
                    removed.append(files.pop(action["remove"]["path"], None))
        listed = ", ".join(f"'{os.path.join(path(t), urllib.parse.unquote(f))}'" for f in sorted(files))
        return f"read_parquet([{listed}], hive_partitioning = true)"
    for t in (RRT, ENGAGEMENT, VELOCITY):
        con.execute(f"CREATE VIEW \"{t}\" AS SELECT * FROM {live(t)}")
    return con, lambda t: f'"{t}"', ("read_parquet over the live files of each Delta log, hive partitions "
                                      f"(no delta extension here; {len(removed)} removed files skipped)")


def duckdb_latency(args, user):
    import duckdb
    con, name_of, how = duckdb_scan(args)
    answers = {}
    for label in QUERIES:
        sql, params = sql_for(label, name_of).replace("%s", "?"), ([user] if label == "c" else [])
        lat, rows = timed(lambda: con.execute(sql, params).fetchall(), args.runs, args.warmup)
        record("latency", label, "DuckDB in-process", "-", 1, lat, len(rows))
        answers[label] = rows
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    return answers, f"DuckDB {duckdb.__version__}, {how}; one connection kept open, {threads} threads"


def concurrency(args, n):
    sql, lat, errors = sql_for("b", lambda t: t), [[] for _ in range(n)], []
    conns = [connect(args, f"bench-analyst-{i}", "analyst") for i in range(n)]
    bounds = {}
    def go():  # when every client is connected and warm: the clock starts
        bounds.update(t0=time.perf_counter(), server0=args.server_pid and cpu_seconds(args.server_pid),
                      client0=cpu_seconds(), machine0=cpu_seconds(0))
        bounds["end"] = bounds["t0"] + args.seconds
    start = threading.Barrier(n + 1, action=go)
    def client(i):
        pg_run(conns[i], sql)
        start.wait()
        while time.perf_counter() < bounds["end"]:
            t = time.perf_counter()
            try:
                pg_run(conns[i], sql)
                lat[i].append((time.perf_counter() - t) * 1000)
            except Exception as e:  # noqa: BLE001 - counted and shown, not fatal
                errors.append(f"{type(e).__name__}: {e}".splitlines()[0])
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    start.wait()
    [t.join() for t in threads]
    elapsed = time.perf_counter() - bounds["t0"]
    rate = lambda key, pid=None: f"{(cpu_seconds(pid) - bounds[key]) / elapsed:.2f}"
    cpu = f"{rate('server0', args.server_pid) if args.server_pid else '?'} / {rate('client0')} / {rate('machine0', 0)}"
    [c.close() for c in conns]
    every = [x for one in lat for x in one]
    record("concurrency", "b", "pg-wire, simple", "analyst", n, every, "-", qps=len(every) / elapsed, cpu=cpu)
    if errors:
        MISMATCHES.append(f"{n} clients: {len(errors)} errors, first: {errors[0]}")


def rls_cost(args, idents):
    learner = idents["learner"][0]
    seen = {}
    for label, params in (("b", None), ("c", (learner,))):
        sql = sql_for(label, lambda t: t)
        for key, (sub, role) in idents.items():
            conn = connect(args, sub, role)
            lat, rows = timed(lambda: pg_run(conn, sql, params), args.runs, args.warmup)
            conn.close()
            record("row-level security", label, f"pg-wire, {'simple' if params is None else 'extended, unnamed'}",
                   f"{role} {sub}", 1, lat, len(rows))
            seen.setdefault(label, {})[role] = rows
    compare("c, the learner's rows as each role (all may see them)", False, seen["c"])


def machine():
    mem = next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    return f"{len(os.sched_getaffinity(0))} CPUs (nproc; {cpu}), {int(mem) / 2**20:.1f} GiB RAM, {platform.platform()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lake", required=True)
    ap.add_argument("--pg-port", type=int, required=True)
    ap.add_argument("--binary", required=True, help="the sluice binary, for `sluice query`")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--runs", type=int, default=200, help="timed runs per latency figure")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cli-runs", type=int, default=10)
    ap.add_argument("--server-pid", type=int, help="for the server's CPU time and peak memory")
    ap.add_argument("--built-by", help="how the lake was made, to print")
    ap.add_argument("--command", default=" ".join(sys.argv), help="the command line to print")
    args = ap.parse_args()
    args.lake, args.secret = os.path.abspath(args.lake), os.environ.get("SLUICE_JWT_SECRET") or sys.exit("SLUICE_JWT_SECRET unset")

    analyst = connect(args, "bench-analyst", "analyst")
    idents = pick_identities(analyst)
    sizes = {t: pg_run(analyst, f"SELECT count(*) FROM {t}")[0][0] for t in (RRT, ENGAGEMENT, VELOCITY)}
    analyst.close()
    user = idents["learner"][0]
    pg = pg_latency(args, user)
    cli = cli_latency(args, user)
    duck, duck_how = duckdb_latency(args, user)
    for label in QUERIES:
        compare(label, label != "c", {"pg-wire": pg[label], "sluice query": cli[label], "DuckDB": duck[label]})
    for n in sorted({1, 4, args.clients}):
        concurrency(args, n)
    rls_cost(args, idents)

    print("## `sluice serve` benchmark\n")
    print(f"- command: `{args.command}`")
    print(f"- machine: {machine()}; client and server on the same machine")
    binary = os.path.realpath(args.binary)
    built = dt.datetime.fromtimestamp(os.path.getmtime(binary), dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"- binary: `{binary}` (built {built})")
    print(f"- lake: `{args.lake}`" + (f" ({args.built_by})" if args.built_by else "") + ": " + ", ".join(f"{t} {n} rows" for t, n in sizes.items()))
    print(f"- identities: " + ", ".join(f"{r} `{s}`" for s, r in idents.values()) + "; the point lookup asks for the learner's id")
    print(f"- DuckDB: {duck_how}")
    print(f"- latencies: {args.runs} timed runs after {args.warmup} warm-up ({args.cli_runs} for `sluice query`, which times "
          f"a whole process: start, opening the lake, the query, JSON out); psycopg {__import__('psycopg').__version__}, "
          f"prepare_threshold=None (simple protocol without parameters, unnamed extended with), prepared = a named "
          f"statement parsed once")
    print(f"- concurrency: each client a thread with its own connection, query (b) in a loop for {args.seconds:g} s; "
          "CPU cores = CPU seconds per second of the server, of this benchmark, of the whole machine (what else ran)")
    if args.server_pid:
        try:
            hwm = next(l for l in open(f"/proc/{args.server_pid}/status") if l.startswith("VmHWM")).split()[1]
            print(f"- server peak RSS: {int(hwm) / 1024:.0f} MiB")
        except (OSError, StopIteration):
            pass
    print("\nQueries:\n")
    for label, (what, _) in QUERIES.items():
        print(f"- ({label}) {what}: `{sql_for(label, lambda t: t)}`")
    print("\n| measurement | query | via | as | clients | runs | p50 ms | p95 ms | p99 ms | queries/s "
          "| CPU cores: server / bench / machine | rows |")
    print("|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in ROWS:
        qps = f"{r['qps']:.0f}" if r["qps"] is not None else ""
        print(f"| {r['what']} | ({r['query']}) | {r['via']} | {r['ident']} | {r['clients']} | {r['n']} | "
              f"{r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} | {qps} | {r['cpu']} | {r['rows']} |")
    print("\nAnswers: " + ("pg-wire (each protocol), `sluice query` and DuckDB agree on (a), (b) and (c); all four roles get the "
                            "same rows for the learner's point lookup." if not MISMATCHES else "DIFFERENCES:"))
    for m in MISMATCHES:
        print(f"- {m}")
    return 1 if MISMATCHES else 0


if __name__ == "__main__":
    sys.exit(main())
