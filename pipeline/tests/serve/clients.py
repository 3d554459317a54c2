#!/usr/bin/env python3
"""Real clients against `sluice serve`, checked against an independent model.

`sluice serve` answers SQL over the Postgres wire protocol and a small REST API on
the Delta tables of a lake, filtering every table's rows by the caller's identity
(a JWT: sub, role, exp). This script plays the clients: psycopg 3 (libpq, the
client most Postgres tools are built on) for SQL and urllib for REST. What it
expects comes from a model written here from the row-level-security rules alone:

  * the ground truth is the lake itself, read with delta-rs's Python package
    (`deltalake`), not with anything of the server's;
  * the rules (which tables a role sees, which rows of them) are coded below in
    `Model` straight from their statement, not from the server's code, so that a
    mistake in the server's filter shows as a difference instead of being copied;
  * a query's expected answer is computed in Python over the model's visible rows
    of each table it reads: the filter applies to each table on its own, before
    the query's own logic (joins, CTEs, subqueries, unions, aggregates).

Subcommands (exit 0 when every check passes; otherwise every failure is listed
and the exit code is 1):

  model      --lake DIR                 the identities chosen and the model's
                                        visible rows per identity and table
  matrix     --lake DIR --pg-port P --http-port H --secret S
             per identity and table: counts and rows over the simple and the
             extended protocol (unnamed and prepared statements), invisible
             tables as errors that look like a missing table, query shapes, the
             REST endpoints, 401/403 and security headers, and leaks (errors,
             EXPLAIN, catalogs)
  refusals   --pg-port P --secret S     DDL/DML/COPY/SET refused with a hint,
                                        harmless statements accepted, bad
                                        passwords refused with their reason
  isolation  --pg-port P --secret S     session settings and identities stay on
                                        their own connection
  introspection --pg-port P --secret S [--lake DIR]
             the startup and catalog queries of psql (\\dt, \\dn, \\d), pgjdbc
             (DBeaver, Metabase), DBeaver and Grafana answer, as an analyst and
             as learners, with plausible rows (the lake's tables and column
             types; no analysts-only table for a learner); information_schema
             as Postgres answers it; a schema's and a table's oids within a
             connection; result columns' type oids
  repeat     --lake DIR --pg-port P --secret S
             the same statements again on one connection follow commits to the
             lake (it appends rows: run it last) and the clock

A known limitation of the upstream datafusion-postgres / datafusion-pg-catalog
crates, documented rather than fixed, prints as a NOTE line and is not counted as
a failure: SHOW TRANSACTION ISOLATION LEVEL spelled 'read_committed', a
search_path holding a quoted identifier not stored, oids that differ between
connections (they are stable within one, which is checked).

Run with the venv from infra/pyclients.sh:
  $(infra/pyclients.sh) pipeline/tests/serve/clients.py matrix --lake ... \\
      --pg-port 5433 --http-port 8080 --secret s3cret
"""

from __future__ import annotations

import argparse
import base64
import collections
import dataclasses
import datetime as dt
import decimal
import faulthandler
import hashlib
import hmac
import json
import math
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# The words the server's messages must contain; kept here so they can be aligned
# with the server in one place. Compared case-insensitively.
REFUSAL_HINTS = {
    "create_table": "read-only",
    "create_external_table": "read-only",
    "insert": "read-only",
    "drop_table": "read-only",
    "copy_to_file": "read-only",
    "create_view": "read-only",
    "set_datafusion_option": "not allowed",
    "set_unsupported_option": "not allowed",
}

# Why a token is refused, as a connection error (Postgres) and as the 401's
# {"error": ...} (REST). "missing" applies to REST only, "user_not_sub" to
# Postgres only (the startup message's user name differs from the token's sub).
AUTH_HINTS = {
    "missing": "missing",
    "garbage": "malformed",
    "expired": "expired",
    "wrong_signature": "signature",
    "alg_none": "none",
    "unknown_role": "role",
    "user_not_sub": "sub",
}

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-XSS-Protection": "1; mode=block",
}

USERS = "services.directory.users"
ASSIGNMENTS = "services.directory.teaching_assignments"
ENGAGEMENT = "analytics.learner.engagement_daily"
MASTERY = "analytics.learner.mastery_daily"
VELOCITY = "analytics.learner.velocity_daily"
SKILL_GAPS = "analytics.learner.skill_gaps_daily"
PROGRESS = "analytics.trainer.student_progress_daily"
KPIS = "analytics.organization.kpis_daily"

# The tables the matrix covers, one or more of each kind of ties, with the columns
# compared row by row (a multiset: no column needs to be unique) and a string
# column that the extended-protocol checks filter on with a parameter.
MATRIX_TABLES = {
    "integration.api_gateway.request_logs": (["request_id", "user_id", "org_id", "status"], "user_id"),
    ENGAGEMENT: (["date", "user_id", "org_id", "interactions"], "user_id"),
    MASTERY: (["date", "user_id", "skill_id", "attempts"], "skill_id"),
    KPIS: (["date", "org_id", "active_learners"], "org_id"),
    PROGRESS: (["date", "trainer_id", "students_active"], "trainer_id"),
    USERS: (["user_id", "org_id", "role"], "role"),
    ASSIGNMENTS: (["assignment_id", "trainer_id", "student_id"], "trainer_id"),
    "monitoring.api_performance.request_response_times": (["date", "service", "route", "requests"], "service"),
    "monitoring.integration_health.dead_letters": (["_topic", "_partition", "_offset"], "_topic"),
}

# ---------------------------------------------------------------------------
# The model: the lake as read by delta-rs, and the row-level-security rules.

TIE_DEFAULTS = {"user": "user_id", "trainer": "trainer_id", "org": "org_id"}
# The policy file's overrides: a tie named here replaces the default one.
TIE_OVERRIDES = {ASSIGNMENTS: {"user": "student_id", "trainer": "trainer_id"}}


@dataclasses.dataclass
class Table:
    name: str
    path: str
    columns: list
    rows: list
    ties: dict  # "user" / "trainer" / "org" -> column name or None


@dataclasses.dataclass(frozen=True)
class Identity:
    label: str
    sub: str
    role: str

    def __str__(self):
        return f"{self.label} ({self.role} {self.sub!r})"


class Lake:
    """Every Delta table of a local lake: <lake>/<catalog>/<schema>/<table>/_delta_log."""

    def __init__(self, root):
        from deltalake import DeltaTable  # only the lake-reading subcommands need it

        if not os.path.isdir(root):
            raise SystemExit(f"{root}: not a directory (the lake's local directory)")
        self.root = root
        self.tables = {}
        for parts in sorted(self._table_dirs(root)):
            path = os.path.join(root, *parts)
            arrow = DeltaTable(path).to_pyarrow_table()
            columns = list(arrow.schema.names)
            name = ".".join(parts)
            ties = {tie: (col if col in columns else None) for tie, col in TIE_DEFAULTS.items()}
            ties.update(TIE_OVERRIDES.get(name, {}))
            self.tables[name] = Table(name, path, columns, arrow.to_pylist(), ties)
        for needed in (USERS, ASSIGNMENTS):
            if needed not in self.tables:
                raise SystemExit(f"{root}: no {needed} table, which the rules need")
        self.users = {r["user_id"]: r for r in self.tables[USERS].rows if r["user_id"] is not None}
        self.students = collections.defaultdict(set)
        for r in self.tables[ASSIGNMENTS].rows:
            if r["trainer_id"] is not None and r["student_id"] is not None:
                self.students[r["trainer_id"]].add(r["student_id"])

    @staticmethod
    def _table_dirs(root):
        for a in os.listdir(root):
            for b in _subdirs(os.path.join(root, a)):
                for c in _subdirs(os.path.join(root, a, b)):
                    if os.path.isdir(os.path.join(root, a, b, c, "_delta_log")):
                        yield (a, b, c)

    def org_of(self, user_id):
        row = self.users.get(user_id) if user_id is not None else None
        return row["org_id"] if row else None


def _subdirs(path):
    return [d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))] if os.path.isdir(path) else []


class Model:
    """Which tables and rows an identity sees, from the rules alone."""

    def __init__(self, lake):
        self.lake = lake
        self._cache = {}
        self._mine = {}  # trainer -> {trainer} | students

    def table_visible(self, ident, name):
        ties = self.lake.tables[name].ties
        if ident.role == "analyst":
            return True
        if ident.role == "learner":
            return ties["user"] is not None
        if ident.role == "trainer":
            return ties["user"] is not None or ties["trainer"] is not None
        if ident.role == "org_admin":
            return any(ties.values())
        return False

    def row_visible(self, ident, table, row):
        me, ties = ident.sub, table.ties
        user = row[ties["user"]] if ties["user"] else None
        trainer = row[ties["trainer"]] if ties["trainer"] else None
        if ident.role == "analyst":
            return True
        if ident.role == "learner":
            return user is not None and user == me
        if ident.role == "trainer":
            mine = self._mine.get(me)
            if mine is None:
                mine = self._mine[me] = {me} | self.lake.students.get(me, set())
            return (user is not None and user in mine) or (trainer is not None and trainer == me)
        if ident.role == "org_admin":
            my_org = self.lake.org_of(me)
            if my_org is None:
                return False
            if ties["org"] is not None:
                org = row[ties["org"]]
                if org is not None and org == my_org:
                    return True
                if org is None and ties["user"] is not None and self.lake.org_of(user) == my_org:
                    return True
            elif ties["user"] is not None and self.lake.org_of(user) == my_org:
                return True
            return ties["trainer"] is not None and self.lake.org_of(trainer) == my_org
        return False

    def visible(self, ident, name):
        """The rows of `name` that `ident` sees, or None when the table does not exist for it."""
        key = (ident, name)
        if key not in self._cache:
            if not self.table_visible(ident, name):
                self._cache[key] = None
            else:
                table = self.lake.tables[name]
                self._cache[key] = [r for r in table.rows if self.row_visible(ident, table, r)]
        return self._cache[key]

    def allowed_ids(self, ident):
        """User and org ids `ident` may read somewhere: its own and those of its visible rows."""
        ids = {ident.sub}
        for name, table in self.lake.tables.items():
            cols = [c for c in ("user_id", "trainer_id", "student_id", "org_id") if c in table.columns]
            for row in self.visible(ident, name) or []:
                ids.update(row[c] for c in cols if row[c] is not None)
        return ids

    def all_ids(self):
        ids = set()
        for table in self.lake.tables.values():
            cols = [c for c in ("user_id", "trainer_id", "student_id", "org_id") if c in table.columns]
            for row in table.rows:
                ids.update(row[c] for c in cols if row[c] is not None)
        return ids


def choose_identities(lake):
    """2 learners with engagement rows, 2 trainers with students, 2 org admins, an
    analyst, an unknown learner, and an unknown learner whose sub is SQL-ish."""
    count = collections.Counter
    engagement = count(r["user_id"] for r in lake.tables.get(ENGAGEMENT, Table("", "", [], [], {})).rows)
    mastery = count(r["user_id"] for r in lake.tables.get(MASTERY, Table("", "", [], [], {})).rows)
    progress = count(r["trainer_id"] for r in lake.tables.get(PROGRESS, Table("", "", [], [], {})).rows)

    def by_role(role):
        return [u for u, r in lake.users.items() if r["role"] == role]

    taught = {s for students in lake.students.values() for s in students}
    learners = sorted((u for u in by_role("learner") if engagement[u]),
                      key=lambda u: (-engagement[u], u not in taught, -mastery[u], _natural(u)))[:2]
    trainers = sorted((u for u in by_role("trainer") if lake.students.get(u)),
                      key=lambda u: (-progress[u], -len(lake.students[u]), _natural(u)))[:2]
    admins, seen_orgs = [], set()
    for u in sorted(by_role("org_admin"), key=_natural):  # different orgs first
        if lake.org_of(u) not in seen_orgs:
            admins.append(u)
            seen_orgs.add(lake.org_of(u))
    admins = (admins + [u for u in sorted(by_role("org_admin"), key=_natural) if u not in admins])[:2]
    idents = [Identity(f"learner{i + 1}", u, "learner") for i, u in enumerate(learners)]
    idents += [Identity(f"trainer{i + 1}", u, "trainer") for i, u in enumerate(trainers)]
    idents += [Identity(f"org_admin{i + 1}", u, "org_admin") for i, u in enumerate(admins)]
    analyst = next((u for u in by_role("analyst")), "analyst-1")
    idents += [Identity("analyst", analyst, "analyst"),
               Identity("nobody", "nobody", "learner"),
               Identity("quote", "x' OR '1'='1", "learner")]
    return idents


def _natural(s):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s or "")]


# ---------------------------------------------------------------------------
# Values: what the lake holds and what psycopg or JSON hands back, made comparable.

def norm(v):
    if v is None or isinstance(v, (bool, str, int)):
        return v
    if isinstance(v, float):
        return v if not math.isfinite(v) else float(f"{v:.12g}")
    if isinstance(v, decimal.Decimal):
        return norm(float(v))
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return v.isoformat(sep=" ")
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    return v


def row_tuple(row, cols):
    return tuple(norm(row[c]) for c in cols)


def camel(name):
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def sql_sum(values):
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def sql_avg(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def quote_ident(name):
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------------------
# Reporting

class Report:
    """Counts checks, keeps every failure with its context, prints a summary."""

    def __init__(self, verbose=False):
        self.verbose = verbose
        self.passed = 0
        self.failures = []
        self.notes = []
        self.context = ""

    def section(self, title):
        self.context = title
        print(f"== {title}", flush=True)

    def ok(self, what):
        self.passed += 1
        if self.verbose:
            print(f"   ok  {what}", flush=True)

    def fail(self, what, detail=""):
        text = f"[{self.context}] {what}" + (f": {detail}" if detail else "")
        self.failures.append(text)
        print(f"   FAIL {what}" + (f": {detail}" if detail else ""), flush=True)

    def note(self, what, detail=""):
        """A known limitation (of the upstream Postgres emulation) seen: printed, not a failure."""
        text = f"[{self.context}] {what}" + (f": {detail}" if detail else "")
        self.notes.append(text)
        print(f"   NOTE {what}" + (f": {detail}" if detail else ""), flush=True)

    def check(self, cond, what, detail=""):
        if cond:
            self.ok(what)
        else:
            self.fail(what, detail)
        return cond

    def equal(self, got, want, what):
        return self.check(got == want, what, f"got {short(got)}, want {short(want)}")

    def multiset(self, got_rows, want_rows, what):
        got, want = collections.Counter(got_rows), collections.Counter(want_rows)
        if got == want:
            self.ok(f"{what} ({len(got_rows)} rows)")
            return True
        missing, extra = want - got, got - want
        self.fail(what, f"got {len(got_rows)} rows, model {len(want_rows)}; "
                        f"missing {sum(missing.values())} e.g. {short(list(missing)[:3])}; "
                        f"unexpected {sum(extra.values())} e.g. {short(list(extra)[:3])}")
        return False

    def guard(self, what, fn, *args, **kwargs):
        """Runs one check; an exception the check did not expect is a failure, not a crash."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the report must go on
            self.fail(what, f"unexpected {type(e).__name__}: {one_line(e)}")
            return None

    def finish(self, name):
        total = self.passed + len(self.failures)
        notes = f", {len(self.notes)} notes (known limitations, not failures)" if self.notes else ""
        print(f"\nclients.py {name}: {total} checks, {len(self.failures)} failing{notes}", flush=True)
        if self.notes:
            print("\nNotes:")
            for n in self.notes:
                print(f"  - {n}")
        if self.failures:
            print("\nFailures:")
            for f in self.failures:
                print(f"  - {f}")
        return 1 if self.failures else 0


def short(v, limit=300):
    s = repr(v)
    return s if len(s) <= limit else s[:limit] + "..."


def one_line(e, limit=500):
    s = " | ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
    return s if len(s) <= limit else s[:limit] + "..."


# ---------------------------------------------------------------------------
# Tokens (HS256 with the standard library)

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(secret, claims, header=None, sign_with=None):
    header = header or {"alg": "HS256", "typ": "JWT"}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + b64url(json.dumps(claims, separators=(",", ":")).encode()))
    if header.get("alg") == "none":
        return signing_input + "."
    key = (sign_with if sign_with is not None else secret).encode()
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def token_for(secret, ident, ttl=3600):
    return jwt(secret, {"sub": ident.sub, "role": ident.role, "exp": int(time.time()) + ttl})


def bad_tokens(secret, sub="analyst-1", role="analyst"):
    """Tokens the server must refuse, by AUTH_HINTS key (all for `sub`)."""
    now = int(time.time())
    good = {"sub": sub, "role": role, "exp": now + 3600}
    return {
        "garbage": "garbage",
        "expired": jwt(secret, dict(good, exp=now - 3600)),
        "wrong_signature": jwt(secret, good, sign_with=secret + "-not-it"),
        "alg_none": jwt(secret, good, header={"alg": "none", "typ": "JWT"}),
        "unknown_role": jwt(secret, dict(good, role="superuser")),
    }


# ---------------------------------------------------------------------------
# Postgres clients

def _psycopg():
    import psycopg
    return psycopg


class Pg:
    def __init__(self, port, secret):
        self.port = port
        self.secret = secret

    def connect(self, ident=None, *, user=None, password=None, **extra):
        psycopg = _psycopg()
        params = dict(host="127.0.0.1", port=self.port, dbname="sluice", sslmode="disable",
                      gssencmode="disable", connect_timeout=10)
        params.update(extra)
        conn = psycopg.connect(user=user if user is not None else ident.sub,
                               password=password if password is not None else token_for(self.secret, ident),
                               autocommit=True, **params)
        # Prepare only when asked (prepare=True): a query run without parameters
        # then always goes over the simple protocol.
        conn.prepare_threshold = 10**9
        return conn


class Session:
    """One connection for one identity; reconnects (reporting it) when the server dropped it."""

    def __init__(self, pg, ident, report):
        self.pg, self.ident, self.report = pg, ident, report
        self._conn = None
        self.last = "connecting"

    @property
    def conn(self):
        if self._conn is None or self._conn.closed:
            if self._conn is not None:
                self.report.fail(f"{self.ident}: connection closed", f"after: {self.last}")
            self._conn = self.pg.connect(self.ident)
        return self._conn

    def query(self, sql, params=None, prepare=None):
        """(column names, rows); params=None and prepare=None is the simple protocol."""
        self.last = sql if params is None else f"{sql} {params!r}"
        with self.conn.cursor() as cur:
            if params is None and prepare is None:
                cur.execute(sql)
            else:
                cur.execute(sql, params, prepare=prepare)
            if cur.description is None:
                return [], []
            return [c.name for c in cur.description], cur.fetchall()

    def alive(self, what):
        try:
            _, rows = self.query("SELECT 1")
            self.report.check(rows == [(1,)], f"{what}: connection still answers", f"SELECT 1 gave {rows!r}")
        except Exception as e:  # noqa: BLE001
            self.report.fail(f"{what}: connection still answers", one_line(e))

    def close(self):
        if self._conn is not None and not self._conn.closed:
            self._conn.close()


def pg_error_text(e):
    diag = getattr(e, "diag", None)
    primary = diag.message_primary if diag is not None else None
    return primary or str(e)


# ---------------------------------------------------------------------------
# HTTP client

class Http:
    """GETs on loopback; every response's security headers are noted for check_security_headers."""

    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"
        self.responses = 0
        self.header_problems = collections.defaultdict(list)  # (header, value) -> ["GET ... -> 200"]

    def get(self, path, token=None, params=None):
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        req = urllib.request.Request(url)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                status, headers, raw = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, headers, raw = e.code, e.headers, e.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.responses += 1
        for name, want in SECURITY_HEADERS.items():
            got = headers.get(name)
            if (got or "").strip().lower() != want.lower():
                self.header_problems[(name, got)].append(f"GET {url[len(self.base):]} -> {status}")
        return status, headers, body


def check_security_headers(report, http):
    for (name, got), where in sorted(http.header_problems.items(), key=str):
        report.fail(f"{name}: {SECURITY_HEADERS[name]}",
                    f"{'absent' if got is None else repr(got)} on {len(where)} of {http.responses} responses, "
                    f"e.g. {'; '.join(where[:3])}")
    if not http.header_problems:
        report.ok(f"security headers on all {http.responses} responses")


def wait_for_port(port, seconds):
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


# ---------------------------------------------------------------------------
# matrix: tables per identity, both protocols

def check_tables(report, model, sess, ident):
    for name, (keys, filter_col) in MATRIX_TABLES.items():
        if name not in model.lake.tables:
            print(f"   (skipped {name}: not in the lake)")
            continue
        vis = model.visible(ident, name)
        if vis is None:
            report.guard(f"{ident} {name}", check_invisible, report, model, sess, ident, name, filter_col)
        else:
            report.guard(f"{ident} {name}", check_visible, report, model, sess, ident, name, keys, filter_col, vis)


def check_visible(report, model, sess, ident, name, keys, filter_col, vis):
    table = model.lake.tables[name]
    what = f"{ident} {name}"
    # Simple protocol: count, key columns, every column.
    _, rows = sess.query(f"SELECT count(*) FROM {name}")
    report.equal(rows, [(len(vis),)], f"{what}: count(*) (simple)")
    cols = ", ".join(quote_ident(k) for k in keys)
    _, rows = sess.query(f"SELECT {cols} FROM {name}")
    report.multiset([tuple(norm(v) for v in r) for r in rows], [row_tuple(r, keys) for r in vis],
                    f"{what}: rows of {keys} (simple)")
    names, rows = sess.query(f"SELECT * FROM {name}")
    if report.equal(sorted(names), sorted(table.columns), f"{what}: SELECT * columns"):
        report.multiset([tuple(norm(v) for v in r) for r in rows], [row_tuple(r, names) for r in vis],
                        f"{what}: SELECT * rows, every column (simple)")
    # Extended protocol: a string parameter, once unnamed, then a prepared statement
    # run with a value seen in the visible rows and one only in the hidden rows.
    seen = {id(r) for r in vis}
    hidden = [r for r in table.rows if id(r) not in seen]
    values = [_most_common(vis, filter_col), _most_common(hidden, filter_col)]
    values = list(dict.fromkeys(v for v in values if v is not None)) or ["no-such-value"]
    for value in values:
        want = [r for r in vis if r[filter_col] == value]
        _, rows = sess.query(f"SELECT count(*) FROM {name} WHERE {quote_ident(filter_col)} = %s", (value,))
        report.equal(rows, [(len(want),)], f"{what}: count(*) where {filter_col} = {value!r} (extended)")
        _, rows = sess.query(f"SELECT count(*) FROM {name} WHERE {quote_ident(filter_col)} <> %s "
                             f"OR {quote_ident(filter_col)} IS NULL", (value,))
        report.equal(rows, [(len(vis) - len(want),)], f"{what}: count(*) where {filter_col} <> {value!r} (extended)")
        _, rows = sess.query(f"SELECT {cols} FROM {name} WHERE {quote_ident(filter_col)} = %s", (value,),
                             prepare=True)
        report.multiset([tuple(norm(v) for v in r) for r in rows], [row_tuple(r, keys) for r in want],
                        f"{what}: rows where {filter_col} = {value!r} (prepared)")
    _, rows = sess.query(f"SELECT count(*) FROM {name}", prepare=True)
    report.equal(rows, [(len(vis),)], f"{what}: count(*) (prepared, no parameters)")


def _most_common(rows, col):
    counts = collections.Counter(r[col] for r in rows if r[col] is not None)
    return min(counts, key=lambda v: (-counts[v], v)) if counts else None


def check_invisible(report, model, sess, ident, name, filter_col):
    psycopg = _psycopg()
    what = f"{ident} {name} (not visible)"
    catalog, schema, _ = name.split(".")
    missing = f"{catalog}.{schema}.no_such_table_{os.getpid()}"
    attempts = [
        ("simple", f"SELECT count(*) FROM {name}", None, None),
        ("extended", f"SELECT count(*) FROM {name} WHERE {quote_ident(filter_col)} = %s", ("x",), None),
        ("prepared", f"SELECT * FROM {name}", None, True),
    ]
    for proto, sql, params, prepare in attempts:
        try:
            _, rows = sess.query(sql, params, prepare)
            report.fail(f"{what}: {proto} query must fail", f"answered {short(rows)}")
        except psycopg.Error as e:
            report.ok(f"{what}: {proto} query fails ({one_line(e, 120)})")
            # The error must not tell a hidden table from a missing one.
            try:
                sess.query(sql.replace(name, missing), params, prepare)
                report.fail(f"{what}: control query on {missing} must fail", "it answered")
            except psycopg.Error as control:
                got = (e.sqlstate, _strip_name(pg_error_text(e), name))
                want = (control.sqlstate, _strip_name(pg_error_text(control), missing))
                report.check(got == want, f"{what}: {proto} error reads like a missing table's",
                             f"{got!r} vs missing table {want!r}")
        sess.alive(f"{what} after {proto} error")


def _strip_name(message, name):
    last = name.rsplit(".", 1)[1]
    return message.replace(name, "<T>").replace(last, "<T>").lower()


# ---------------------------------------------------------------------------
# matrix: query shapes, expected over each table's visible rows

@dataclasses.dataclass
class Shape:
    name: str
    sql: str
    tables: list
    expect: object  # fn(visible: dict name -> rows) -> list of tuples
    params: tuple = None


def shapes(lake):
    E, M, U, TA, P = ENGAGEMENT, MASTERY, USERS, ASSIGNMENTS, PROGRESS
    values = sorted(r["interactions"] for r in lake.tables[E].rows if r["interactions"] is not None) or [0]
    threshold = values[len(values) // 2]
    org = _most_common(lake.tables[U].rows, "org_id") or "org-1"
    day = max((r["date"] for r in lake.tables[E].rows if r["date"] is not None), default=dt.date(2026, 3, 1))
    return [
        Shape("join", f'SELECT e.user_id, e."date", u.role FROM {E} e JOIN {U} u ON e.user_id = u.user_id',
              [E, U], lambda v: [(e["user_id"], e["date"], u["role"]) for e in v[E] for u in v[U]
                                 if e["user_id"] is not None and e["user_id"] == u["user_id"]]),
        Shape("join_assignments",
              f'SELECT t.trainer_id, t.student_id, e."date" FROM {TA} t JOIN {E} e ON e.user_id = t.student_id',
              [TA, E], lambda v: [(t["trainer_id"], t["student_id"], e["date"]) for t in v[TA] for e in v[E]
                                  if e["user_id"] is not None and e["user_id"] == t["student_id"]]),
        Shape("join_trainer",
              f'SELECT p.trainer_id, p."date", u.org_id FROM {P} p JOIN {U} u ON p.trainer_id = u.user_id',
              [P, U], lambda v: [(p["trainer_id"], p["date"], u["org_id"]) for p in v[P] for u in v[U]
                                 if p["trainer_id"] is not None and p["trainer_id"] == u["user_id"]]),
        Shape("cte", f"WITH busy AS (SELECT user_id, interactions FROM {E} WHERE interactions >= {threshold}) "
                     f"SELECT user_id, count(*), sum(interactions) FROM busy GROUP BY user_id",
              [E], lambda v: _group(v[E], lambda r: r["interactions"] is not None and r["interactions"] >= threshold,
                                    lambda r: (r["user_id"],),
                                    lambda rs: (len(rs), sql_sum(r["interactions"] for r in rs)))),
        Shape("subquery_in", f"SELECT user_id, skill_id, \"date\" FROM {M} WHERE user_id IN "
                             f"(SELECT user_id FROM {U} WHERE role = 'learner')",
              [M, U], lambda v: [(m["user_id"], m["skill_id"], m["date"]) for m in v[M]
                                 if m["user_id"] in {u["user_id"] for u in v[U] if u["role"] == "learner"}]),
        Shape("scalar_subquery", f"SELECT count(*) FROM {E} WHERE interactions > "
                                 f"(SELECT avg(interactions) FROM {E})",
              [E], lambda v: [(_count_above_avg(v[E], "interactions"),)]),
        Shape("union_all", f"SELECT user_id, 'engagement' AS src FROM {E} "
                           f"UNION ALL SELECT user_id, 'mastery' AS src FROM {M}",
              [E, M], lambda v: [(r["user_id"], "engagement") for r in v[E]] + [(r["user_id"], "mastery") for r in v[M]]),
        Shape("group_by", f'SELECT org_id, count(*), sum(interactions), min("date"), max("date") FROM {E} GROUP BY org_id',
              [E], lambda v: _group(v[E], lambda r: True, lambda r: (r["org_id"],),
                                    lambda rs: (len(rs), sql_sum(r["interactions"] for r in rs),
                                                min(r["date"] for r in rs), max(r["date"] for r in rs)))),
        Shape("aggregate", f"SELECT count(*), count(DISTINCT user_id), sum(sessions) FROM {E}",
              [E], lambda v: [(len(v[E]), len({r["user_id"] for r in v[E] if r["user_id"] is not None}),
                               sql_sum(r["sessions"] for r in v[E]))]),
        Shape("group_by_trainer", f"SELECT trainer_id, count(*), sum(students_active) FROM {P} GROUP BY trainer_id",
              [P], lambda v: _group(v[P], lambda r: True, lambda r: (r["trainer_id"],),
                                    lambda rs: (len(rs), sql_sum(r["students_active"] for r in rs)))),
        Shape("join_param", f'SELECT e.user_id, e."date" FROM {E} e JOIN {U} u ON e.user_id = u.user_id '
                            f"WHERE u.org_id = %s",
              [E, U], lambda v: [(e["user_id"], e["date"]) for e in v[E] for u in v[U]
                                 if e["user_id"] is not None and e["user_id"] == u["user_id"] and u["org_id"] == org],
              params=(org,)),
        # psycopg sends an int (int2 here) and a date as binary parameters, a str as text.
        Shape("param_int", f"SELECT user_id, interactions FROM {E} WHERE interactions >= %s",
              [E], lambda v: [(r["user_id"], r["interactions"]) for r in v[E]
                              if r["interactions"] is not None and r["interactions"] >= threshold],
              params=(threshold,)),
        Shape("param_date", f'SELECT user_id, "date" FROM {E} WHERE "date" = %s',
              [E], lambda v: [(r["user_id"], r["date"]) for r in v[E] if r["date"] == day], params=(day,)),
    ]


def _group(rows, where, key, agg):
    groups = collections.defaultdict(list)
    for r in rows:
        if where(r):
            groups[key(r)].append(r)
    return [k + agg(rs) for k, rs in groups.items()]


def _count_above_avg(rows, col):
    avg = sql_avg(r[col] for r in rows)
    return 0 if avg is None else sum(1 for r in rows if r[col] is not None and r[col] > avg)


def check_shapes(report, model, sess, ident):
    psycopg = _psycopg()
    for shape in shapes(model.lake):
        if any(t not in model.lake.tables for t in shape.tables):
            print(f"   (skipped shape {shape.name}: a table is not in the lake)")
            continue
        visible = {t: model.visible(ident, t) for t in shape.tables}
        hidden = [t for t, rows in visible.items() if rows is None]
        want = None if hidden else [tuple(norm(x) for x in row) for row in shape.expect(visible)]
        runs = [("extended", shape.params, None), ("prepared", shape.params, True)] if shape.params \
            else [("simple", None, None), ("prepared", None, True)]
        for proto, params, prepare in runs:
            what = f"{ident} shape {shape.name} ({proto})"
            try:
                _, rows = sess.query(shape.sql, params, prepare)
            except psycopg.Error as e:
                if hidden:
                    report.ok(f"{what}: fails, {hidden} not visible")
                else:
                    report.fail(what, f"failed: {one_line(e)}")
                sess.alive(what)
                continue
            if hidden:
                report.fail(what, f"must fail ({hidden} not visible) but answered {short(rows)}")
            else:
                report.multiset([tuple(norm(x) for x in r) for r in rows], want, what)


# ---------------------------------------------------------------------------
# matrix: leaks through errors, EXPLAIN and the catalogs

class HiddenIds:
    """Finds, in a text, the user and org ids an identity may not read."""

    def __init__(self, model, ident):
        ids = model.all_ids() - model.allowed_ids(ident)
        alternatives = "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True))
        # Whole ids only: u-7 is not in u-74.
        self.pattern = re.compile(rf"(?<![A-Za-z0-9_-])(?:{alternatives})(?![A-Za-z0-9_])") if ids else None

    def find(self, text):
        return sorted(set(self.pattern.findall(text))) if self.pattern else []


def check_leaks(report, model, sess, ident):
    if ident.role == "analyst":
        return
    hidden = HiddenIds(model, ident)
    report.guard(f"{ident} cast leak", check_cast_leak, report, model, sess, ident, hidden)
    report.guard(f"{ident} explain leak", check_explain_leak, report, model, sess, ident, hidden)
    report.guard(f"{ident} catalog leak", check_catalog_leak, report, model, sess, ident)


def check_cast_leak(report, model, sess, ident, hidden):
    """Other users' ids are not numbers: a cast evaluated before the filter names one in its error."""
    psycopg = _psycopg()
    vis = model.visible(ident, ENGAGEMENT)
    if ident.role != "learner" or vis is None:
        return
    for sql in (f"SELECT CAST(user_id AS INT) FROM {ENGAGEMENT}",
                f"SELECT user_id FROM {ENGAGEMENT} WHERE CAST(user_id AS INT) > 0"):
        what = f"{ident} leak: {sql}"
        try:
            _, rows = sess.query(sql)
            if "WHERE" in sql:
                report.check(len(rows) <= len(vis), what, f"{len(rows)} rows for {len(vis)} visible")
            else:
                report.equal(len(rows), len(vis), f"{what}: one row per visible row")
        except psycopg.Error as e:
            report.check(not hidden.find(str(e)), f"{what}: error names no hidden id",
                         f"names {hidden.find(str(e))}: {one_line(e)}")
            sess.alive(what)


def check_explain_leak(report, model, sess, ident, hidden):
    """A plan may show the identity's own filter, never another user's id; hidden tables have no plan."""
    psycopg = _psycopg()
    for name in MATRIX_TABLES:
        if name not in model.lake.tables:
            continue
        visible = model.visible(ident, name) is not None
        for sql in (f"EXPLAIN SELECT * FROM {name}", f"EXPLAIN ANALYZE SELECT * FROM {name}"):
            what = f"{ident} leak: {sql}"
            try:
                _, rows = sess.query(sql)
                text = "\n".join(" ".join(str(x) for x in r) for r in rows)
                if not visible:
                    report.fail(what, "must fail (table not visible) but answered")
                else:
                    report.check(not hidden.find(text), f"{what}: plan names no hidden id",
                                 f"names {hidden.find(text)}")
            except psycopg.Error as e:
                report.check(not hidden.find(str(e)), f"{what}: error names no hidden id",
                             f"names {hidden.find(str(e))}: {one_line(e)}")
                # EXPLAIN ANALYZE may be refused; a plain EXPLAIN of a visible table must work.
                if visible and not sql.startswith("EXPLAIN ANALYZE"):
                    report.fail(what, f"EXPLAIN of a visible table failed: {one_line(e)}")
                sess.alive(what)


def check_catalog_leak(report, model, sess, ident):
    """The catalogs list no table the identity cannot read (failing to answer lists none)."""
    psycopg = _psycopg()
    hidden = {n for n in model.lake.tables if model.visible(ident, n) is None}
    # pg_class has bare names: one shared with a visible table proves nothing.
    hidden_names = {n.rsplit(".", 1)[1] for n in hidden} - \
        {n.rsplit(".", 1)[1] for n in model.lake.tables if n not in hidden}
    for sql, listed in (
        ("SELECT table_catalog, table_schema, table_name FROM information_schema.tables",
         lambda rows: sorted({".".join(str(x) for x in r) for r in rows} & hidden)),
        ("SELECT relname FROM pg_catalog.pg_class",
         lambda rows: sorted({str(r[0]) for r in rows} & hidden_names)),
    ):
        what = f"{ident} catalog: {sql}"
        try:
            _, rows = sess.query(sql)
            report.check(not listed(rows), f"{what}: lists no hidden table", f"lists {listed(rows)}")
        except psycopg.Error as e:
            report.ok(f"{what}: fails ({one_line(e, 120)}), so lists nothing")
            sess.alive(what)


# ---------------------------------------------------------------------------
# matrix: REST

INJECTION = "' OR '1'='1"  # a parameter value that must match nothing, not everything
LEARNER_LISTS = [("velocity", VELOCITY, "course_id"), ("mastery", MASTERY, "skill_id"),
                 ("skillGaps", SKILL_GAPS, "skill_id"), ("engagement", ENGAGEMENT, "org_id")]
DROPPED = {"window_start", "window_end"}


def json_rows(rows, drop, frm, to):
    out = []
    for r in rows:
        day = norm(r.get("date"))
        if (frm and day < frm) or (to and day > to):
            continue
        out.append({camel(k): norm(v) for k, v in r.items() if k not in DROPPED | {drop}})
    return out


def json_key(obj):
    return tuple(sorted((k, norm(v)) for k, v in obj.items()))


def compare_json_rows(report, got, want, order_key, what):
    if not isinstance(got, list):
        report.fail(what, f"not a list: {short(got)}")
        return
    if not all(isinstance(g, dict) for g in got):
        report.fail(what, f"not a list of objects: {short(got)}")
        return
    report.multiset([json_key(g) for g in got], [json_key(w) for w in want], what)
    keys = [tuple(str(g.get(k)) for k in order_key) for g in got]
    report.check(keys == sorted(keys), f"{what}: sorted by {order_key}", f"order {short(keys)}")
    if want and got:
        report.equal(sorted(got[0]), sorted(want[0]), f"{what}: keys of a row")


def check_rest(report, model, http, ident, secret, idents, dates):
    token = token_for(secret, ident)
    d0, dn = dates[0], dates[-1]
    ranges = [(None, None), (d0, d0), (dn, None), (None, d0)]
    lake = model.lake
    learners = [i.sub for i in idents if i.role == "learner" and i.sub in lake.users]
    trainers = [i.sub for i in idents if i.role == "trainer"]
    engagement = collections.Counter(r["user_id"] for r in lake.tables[ENGAGEMENT].rows) \
        if ENGAGEMENT in lake.tables else collections.Counter()
    students = sorted((s for t in trainers for s in lake.students.get(t, ())),
                      key=lambda s: (-engagement[s], _natural(s)))[:1]
    orgs = sorted({lake.org_of(i.sub) for i in idents if i.role == "org_admin"} - {None})

    # Learner endpoint: every role may call it; the lists go through the filter.
    for target in [None] + [u for u in learners + students if u != ident.sub] + [INJECTION]:
        for frm, to in (ranges if target is None else ranges[:2]):
            params = {"from": frm, "to": to, "user_id": target}
            what = f"{ident} GET learner {params_text(params)}"
            status, _, body = http.get("/api/v1/analytics/learner", token, params)
            if not report.equal(status, 200, f"{what}: status") or not is_object(report, body, what):
                continue
            user = target or ident.sub
            report.equal((body.get("userId"), body.get("from"), body.get("to")), (user, frm, to), f"{what}: echo")
            for key, table, second in LEARNER_LISTS:
                if table not in lake.tables:
                    continue
                want = json_rows([r for r in model.visible(ident, table) or [] if r["user_id"] == user],
                                 "user_id", frm, to)
                compare_json_rows(report, body.get(key), want, ("date", camel(second)), f"{what}: {key}")

    # Trainer endpoint: trainers, org admins, analysts.
    for target in [None] + [t for t in trainers if t != ident.sub] + [INJECTION]:
        for frm, to in (ranges if target is None else ranges[:2]):
            params = {"from": frm, "to": to, "trainer_id": target}
            what = f"{ident} GET trainer {params_text(params)}"
            status, _, body = http.get("/api/v1/analytics/trainer", token, params)
            if ident.role == "learner":
                report.equal(status, 403, f"{what}: status")
                continue
            if not report.equal(status, 200, f"{what}: status") or not is_object(report, body, what):
                continue
            trainer = target or ident.sub
            report.equal((body.get("trainerId"), body.get("from"), body.get("to")), (trainer, frm, to),
                         f"{what}: echo")
            want_students = sorted({r["student_id"] for r in model.visible(ident, ASSIGNMENTS) or []
                                    if r["trainer_id"] == trainer and r["student_id"] is not None})
            report.equal(body.get("students"), want_students, f"{what}: students")
            if PROGRESS in lake.tables:
                want = json_rows([r for r in model.visible(ident, PROGRESS) or [] if r["trainer_id"] == trainer],
                                 "trainer_id", frm, to)
                compare_json_rows(report, body.get("progress"), want, ("date",), f"{what}: progress")

    # Organization endpoint: org admins and analysts.
    for target in [None] + [o for o in orgs if o != lake.org_of(ident.sub)] + [INJECTION]:
        for frm, to in (ranges if target is None else ranges[:2]):
            params = {"from": frm, "to": to, "org_id": target}
            what = f"{ident} GET organization {params_text(params)}"
            status, _, body = http.get("/api/v1/analytics/organization", token, params)
            if ident.role in ("learner", "trainer"):
                report.equal(status, 403, f"{what}: status")
                continue
            org = target or lake.org_of(ident.sub)
            if org is None:
                # No org given and none in the directory: an empty answer or a 4xx.
                ok = (status == 200 and isinstance(body, dict) and body.get("kpis") == []) or 400 <= status < 500
                report.check(ok, f"{what}: no org to default to", f"{status} {short(body)}")
                continue
            if not report.equal(status, 200, f"{what}: status") or not is_object(report, body, what):
                continue
            report.equal((body.get("orgId"), body.get("from"), body.get("to")), (org, frm, to), f"{what}: echo")
            if KPIS in lake.tables:
                want = json_rows([r for r in model.visible(ident, KPIS) or [] if r["org_id"] == org],
                                 "org_id", frm, to)
                compare_json_rows(report, body.get("kpis"), want, ("date",), f"{what}: kpis")


def is_object(report, body, what):
    return report.check(isinstance(body, dict), f"{what}: a JSON object", short(body))


def params_text(params):
    return urllib.parse.urlencode({k: v for k, v in params.items() if v is not None}) or "(no parameters)"


def check_rest_auth(report, http, secret):
    status, _, body = http.get("/api/v1/health")
    report.equal(status, 200, "health: status")
    report.check(isinstance(body, dict) and body.get("status") == "ok", "health: {\"status\": \"ok\"}", short(body))
    status, _, _ = http.get("/api/v1/no-such-endpoint", token_for(secret, Identity("a", "analyst-1", "analyst")))
    report.check(status in (401, 404), "unknown path: 404", f"got {status}")

    tokens = dict(bad_tokens(secret), missing=None)
    for path in ("/api/v1/analytics/learner", "/api/v1/analytics/trainer", "/api/v1/analytics/organization"):
        for kind, token in tokens.items():
            what = f"GET {path} with {kind} token"
            status, _, body = http.get(path, token)
            report.equal(status, 401, f"{what}: status")
            reason = body.get("error") if isinstance(body, dict) else None
            if report.check(isinstance(reason, str), f"{what}: body {{\"error\": ...}}", short(body)):
                print(f"   401 {kind}: {reason!r}")
                report.check(AUTH_HINTS[kind].lower() in reason.lower(), f"{what}: reason names {AUTH_HINTS[kind]!r}",
                             repr(reason))


# ---------------------------------------------------------------------------
# Subcommands

def cmd_model(args):
    lake = Lake(args.lake)
    model = Model(lake)
    idents = choose_identities(lake)
    print(f"lake {args.lake}: {len(lake.tables)} tables, {len(lake.users)} users")
    for ident in idents:
        extra = ""
        if ident.sub in lake.users:
            extra = f" org {lake.org_of(ident.sub)}"
        if ident.role == "trainer":
            extra += f", {len(lake.students.get(ident.sub, ()))} students"
        print(f"  {ident}{extra}")
    names = sorted(lake.tables) if args.all else [n for n in MATRIX_TABLES if n in lake.tables]
    width = max(len(n) for n in names)
    print("\nvisible rows (- = table does not exist for the identity)")
    print(" " * width + "  total " + " ".join(f"{i.label:>10}" for i in idents))
    for name in names:
        cells = []
        for ident in idents:
            vis = model.visible(ident, name)
            cells.append(f"{'-' if vis is None else len(vis):>10}")
        print(f"{name:<{width}} {len(lake.tables[name].rows):>6} " + " ".join(cells))
    return 0


def cmd_matrix(args):
    report = Report(args.verbose)
    lake = Lake(args.lake)
    model = Model(lake)
    idents = choose_identities(lake)
    for port in (args.pg_port, args.http_port):
        if not wait_for_port(port, args.wait):
            print(f"nothing listens on 127.0.0.1:{port}", file=sys.stderr)
            return 2
    pg, http = Pg(args.pg_port, args.secret), Http(args.http_port)
    dates = sorted({norm(r["date"]) for r in lake.tables[ENGAGEMENT].rows if r["date"] is not None}) \
        if ENGAGEMENT in lake.tables else []
    dates = dates or ["2026-03-01"]
    for ident in idents:
        report.section(f"SQL as {ident}")
        sess = Session(pg, ident, report)
        try:
            sess.conn
        except Exception as e:  # noqa: BLE001
            report.fail(f"{ident}: connect", one_line(e))
            continue
        report.guard(f"{ident} tables", check_tables, report, model, sess, ident)
        report.guard(f"{ident} shapes", check_shapes, report, model, sess, ident)
        report.guard(f"{ident} leaks", check_leaks, report, model, sess, ident)
        sess.close()
    report.section("REST: health, 401s")
    report.guard("REST auth", check_rest_auth, report, http, args.secret)
    for ident in idents:
        report.section(f"REST as {ident}")
        report.guard(f"{ident} REST", check_rest, report, model, http, ident, args.secret, idents, dates)
    report.section("REST: security headers")
    check_security_headers(report, http)
    return report.finish("matrix")


ANALYST = Identity("analyst", "analyst-1", "analyst")


def refusal_statements(copy_target):
    E = ENGAGEMENT
    return [
        ("create_table", "CREATE TABLE x (a int)"),
        ("create_external_table", "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'"),
        ("insert", f"INSERT INTO {E} SELECT * FROM {E}"),
        ("drop_table", f"DROP TABLE {E}"),
        ("copy_to_file", f"COPY {E} TO '{copy_target}'"),
        ("create_view", "CREATE VIEW v AS SELECT 1"),
        ("set_datafusion_option", "SET datafusion.execution.target_partitions = 1"),
        ("set_unsupported_option", "SET max_parallel_workers = 1"),
    ]


ACCEPTED = ["SET application_name = 'x'", "SET statement_timeout = '5s'", "SHOW statement_timeout",
            "BEGIN", f"SELECT count(*) FROM {ENGAGEMENT}", "COMMIT"]


def cmd_refusals(args):
    report = Report(args.verbose)
    if not wait_for_port(args.pg_port, args.wait):
        print(f"nothing listens on 127.0.0.1:{args.pg_port}", file=sys.stderr)
        return 2
    pg = Pg(args.pg_port, args.secret)
    sess = Session(pg, ANALYST, report)
    report.section("statements refused (analyst)")
    report.guard("refused statements", check_refused_statements, report, sess)
    report.section("statements accepted (analyst)")
    report.guard("accepted statements", check_accepted_statements, report, sess)
    sess.close()
    report.section("connections refused")
    report.guard("refused connections", check_refused_connections, report, pg, args.secret)
    return report.finish("refusals")


def check_refused_statements(report, sess):
    """Each statement fails, over both protocols, with its hint, and changes nothing."""
    psycopg = _psycopg()
    count_before = sess.query(f"SELECT count(*) FROM {ENGAGEMENT}")[1]
    copy_target = f"/tmp/sluice-clients-copy-{os.getpid()}.csv"
    for kind, sql in refusal_statements(copy_target):
        for proto, prepare in (("simple", None), ("prepared", True)):
            what = f"{proto}: {sql}"
            try:
                sess.query(sql, prepare=prepare)
                report.fail(what, "must fail but succeeded")
            except psycopg.Error as e:
                print(f"   {kind} ({proto}) -> {one_line(e)}")
                report.check(REFUSAL_HINTS[kind].lower() in str(e).lower(),
                             f"{what}: message names {REFUSAL_HINTS[kind]!r}", one_line(e))
            sess.alive(what)
    report.check(not os.path.exists(copy_target), "COPY wrote no file", copy_target)
    for probe in ("SELECT * FROM x", "SELECT * FROM v"):
        try:
            sess.query(probe)
            report.fail(f"{probe}: nothing was created", "it answered")
        except psycopg.Error:
            report.ok(f"{probe}: nothing was created")
    report.equal(sess.query(f"SELECT count(*) FROM {ENGAGEMENT}")[1], count_before,
                 f"{ENGAGEMENT} unchanged (INSERT and DROP refused)")


def check_accepted_statements(report, sess):
    psycopg = _psycopg()
    for sql in ACCEPTED:
        try:
            _, rows = sess.query(sql)
            report.ok(f"{sql} ({short(rows, 80)})")
            if sql == "SHOW statement_timeout":
                report.check(rows and _is_seconds(rows[0][-1], 5), f"{sql}: shows 5s after the SET", short(rows))
        except psycopg.Error as e:
            report.fail(sql, one_line(e))
            sess.alive(sql)


def check_refused_connections(report, pg, secret):
    """Bad passwords are refused with their reason; a good one still connects."""
    psycopg = _psycopg()
    for kind, token in bad_tokens(secret, ANALYST.sub, ANALYST.role).items():
        check_refused_connection(report, pg, kind, ANALYST.sub, token)
    check_refused_connection(report, pg, "user_not_sub", "analyst-2", token_for(secret, ANALYST))
    try:
        pg.connect(ANALYST).close()
        report.ok("a good token still connects")
    except psycopg.Error as e:
        report.fail("a good token still connects", one_line(e))


def check_refused_connection(report, pg, kind, user, token):
    psycopg = _psycopg()
    what = f"connect with {kind} password"
    try:
        pg.connect(user=user, password=token).close()
        report.fail(what, "must be refused but connected")
    except psycopg.Error as e:
        print(f"   {kind} -> {one_line(e)}")
        report.check(AUTH_HINTS[kind].lower() in str(e).lower(), f"{what}: message names {AUTH_HINTS[kind]!r}",
                     one_line(e))


def _is_seconds(value, seconds):
    text = str(value).strip().lower().replace(" ", "")
    return text in {f"{seconds}s", f"{seconds * 1000}ms", f"{seconds * 1000}", f"{seconds}sec"}


def cmd_isolation(args):
    report = Report(args.verbose)
    if not wait_for_port(args.pg_port, args.wait):
        print(f"nothing listens on 127.0.0.1:{args.pg_port}", file=sys.stderr)
        return 2
    pg = Pg(args.pg_port, args.secret)
    report.section("session settings")
    report.guard("settings per session", check_settings_isolation, report, pg)
    report.section("identities per connection")
    report.guard("identities per connection", check_identity_isolation, report, pg)
    report.section("connection options")
    report.guard("sslmode=prefer", check_ssl_prefer, report, pg)
    return report.finish("isolation")


def cmd_repeat(args):
    """The same statements again on one connection (the server keeps their plans):
    each answer follows the lake, and time-dependent ones follow the clock. Appends
    rows to a table: run it last on a lake."""
    from deltalake import DeltaTable, write_deltalake
    report = Report(args.verbose)
    if not wait_for_port(args.pg_port, args.wait):
        print(f"nothing listens on 127.0.0.1:{args.pg_port}", file=sys.stderr)
        return 2
    session = Session(Pg(args.pg_port, args.secret), ANALYST, report)
    path = os.path.join(args.lake, "analytics", "learner", "engagement_daily")
    count = "SELECT count(*) FROM analytics.learner.engagement_daily"
    per_day = "SELECT date, count(*) FROM analytics.learner.engagement_daily GROUP BY date ORDER BY date"
    # A learner's rows go through the policy's sealed scan, whose state must be
    # reset too when a kept plan runs again (a repeat once answered 0).
    first_user = DeltaTable(path).to_pyarrow_table().column("user_id")[0].as_py()
    learner = Session(Pg(args.pg_port, args.secret), Identity("learner", first_user, "learner"), report)
    for round_ in range(3):
        table = DeltaTable(path).to_pyarrow_table()
        days = {}
        for d in table.column("date").to_pylist():
            days[d] = days.get(d, 0) + 1
        mine = table.column("user_id").to_pylist().count(first_user)
        for _ in range(2):
            report.equal(session.query(count)[1], [(table.num_rows,)], f"round {round_}: count(*) as the lake has it")
            report.equal(session.query(per_day)[1], sorted(days.items()), f"round {round_}: rows per day as the lake has them")
            report.equal(learner.query(count)[1], [(mine,)], f"round {round_}: a learner's count(*) as the lake has their rows")
        # A commit between two runs of the same statements: a copy of three rows.
        write_deltalake(path, table.slice(0, 3), mode="append")
    clock = "SELECT now()"
    first = session.query(clock)[1]
    time.sleep(0.05)
    report.check(session.query(clock)[1] != first, "now() again on the same connection is later", short(first))
    return report.finish("repeat")


def check_settings_isolation(report, pg):
    """SET statement_timeout on A shows on A only, not on B nor on A's next connection."""
    a = Session(pg, ANALYST, report)
    b = Session(pg, Identity("analyst2", "analyst-2", "analyst"), report)
    default = b.query("SHOW statement_timeout")[1]
    a.query("SET statement_timeout = '7s'")
    shown_a = a.query("SHOW statement_timeout")[1]
    report.check(shown_a and _is_seconds(shown_a[0][-1], 7), "A shows its own statement_timeout", short(shown_a))
    after_b = b.query("SHOW statement_timeout")[1]
    report.equal(after_b, default, "B's statement_timeout is untouched by A's SET")
    report.check(after_b != shown_a, "B does not show A's value", f"both {short(after_b)}")
    b.query("SET statement_timeout = '3s'")
    report.equal(a.query("SHOW statement_timeout")[1], shown_a, "A keeps its value after B's SET")
    fresh = Session(pg, ANALYST, report)
    report.equal(fresh.query("SHOW statement_timeout")[1], default,
                 "a new connection of A's identity starts from the default")
    for sess in (a, b, fresh):
        sess.close()


def check_identity_isolation(report, pg):
    """Two identities side by side: each connection keeps its own filter."""
    psycopg = _psycopg()
    analyst = Session(pg, ANALYST, report)
    nobody = Session(pg, Identity("nobody", "nobody", "learner"), report)
    report.equal(nobody.query(f"SELECT count(*) FROM {ENGAGEMENT}")[1], [(0,)], "nobody sees no row")
    total = analyst.query(f"SELECT count(*) FROM {ENGAGEMENT}")[1]
    report.check(len(total) == 1, "the analyst beside it counts", short(total))
    report.equal(nobody.query(f"SELECT count(*) FROM {ENGAGEMENT}")[1], [(0,)],
                 "nobody still sees no row after the analyst's query")
    try:
        nobody.query("SELECT count(*) FROM monitoring.integration_health.dead_letters")
        report.fail("an analysts-only table stays hidden from nobody", "it answered")
    except psycopg.Error:
        report.ok("an analysts-only table stays hidden from nobody")
    analyst.close()
    nobody.close()


def check_ssl_prefer(report, pg):
    """psql's default sslmode=prefer: the server must decline TLS (or speak it)."""
    conn = pg.connect(ANALYST, sslmode="prefer")
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        report.equal(cur.fetchall(), [(1,)], "sslmode=prefer connects and answers")
    conn.close()


# ---------------------------------------------------------------------------
# introspection: the startup and catalog queries of psql, pgjdbc (DBeaver,
# Metabase), DBeaver itself and Grafana's PostgreSQL data source

LAKE_DB = "lake"  # the database the server reports (current_database(), information_schema's table_catalog)
# Tables only analysts read, whatever the lake: a name equal to one, or under one ending in ".".
ANALYSTS_ONLY = ("monitoring.", "real_time.connection_management.websocket_performance",
                 "integration.event_bus.event_processing_logs", "analytics.experiments.results_daily")
ENGAGEMENT_SCHEMA, ENGAGEMENT_TABLE = ENGAGEMENT.rsplit(".", 1)
HIDDEN_EXAMPLE = "monitoring.api_performance.request_response_times"
# Column -> (format_type and information_schema's data_type, pg_type oid, pg_type typname).
ENGAGEMENT_TYPES = {
    "window_start": ("timestamp with time zone", 1184, "timestamptz"),
    "date": ("date", 1082, "date"),
    "interactions": ("bigint", 20, "int8"),
    "avg_latency_ms": ("double precision", 701, "float8"),
    "user_id": ("text", 25, "text"),
}
ISOLATION_LEVELS = {"read committed", "read uncommitted", "repeatable read", "serializable"}


class LakePg(Pg):
    """Connects as the clients below are configured: database "lake"."""

    def connect(self, ident=None, **extra):
        extra.setdefault("dbname", LAKE_DB)
        return super().connect(ident, **extra)


@dataclasses.dataclass
class Probe:
    client: str
    name: str
    sql: str  # <name> is replaced by ctx[name], which an earlier probe's `provides` set
    check: object = None  # fn(report, ctx, what, names, rows)
    extended: bool = False  # also as a prepared statement (extended protocol), as pgjdbc and pgx send it
    params: object = None  # fn(ctx) -> tuple: the query has %s parameters (extended protocol only)
    provides: object = None  # fn(names, rows) -> dict merged into ctx


@dataclasses.dataclass
class IntrospectionCtx:
    ident: Identity
    model: object  # Model, or None without --lake
    values: dict = dataclasses.field(default_factory=dict)

    def hidden(self, name):
        """Whether the table `name` (catalog.schema.table) must not exist for the identity."""
        if self.ident.role == "analyst":
            return False
        if any(name == p or (p.endswith(".") and name.startswith(p)) for p in ANALYSTS_ONLY):
            return True
        return self.model is not None and name in self.model.lake.tables and \
            self.model.visible(self.ident, name) is None

    def expected_tables(self, schema=None):
        """The lake's tables the identity sees (in `schema`), or None without --lake."""
        if self.model is None:
            return None
        return {n for n in self.model.lake.tables if not self.hidden(n)
                and (schema is None or n.rsplit(".", 1)[0] == schema)}

    def hidden_schemas(self):
        """Schemas holding no table the identity sees."""
        if self.ident.role == "analyst":
            return set()
        if self.model is None:
            return {"monitoring." + s for s in ("api_performance", "integration_health")}
        schemas = collections.defaultdict(list)
        for n in self.model.lake.tables:
            schemas[n.rsplit(".", 1)[0]].append(n)
        return {s for s, names in schemas.items() if all(self.hidden(n) for n in names)}


def _is_system_schema(schema):
    return schema in ("information_schema", "public") or str(schema).startswith("pg_")


def check_table_listing(report, ctx, what, pairs, schema=None, types=None):
    """pairs: (schema, table) as listed. Lists engagement_daily and no hidden table; with
    --lake, exactly the tables the identity sees (in `schema`)."""
    listed = {f"{s}.{t}" for s, t in pairs if not _is_system_schema(s)}
    if schema is None or schema == ENGAGEMENT_SCHEMA:
        report.check(ENGAGEMENT in listed, f"{what}: lists {ENGAGEMENT_TABLE} under {ENGAGEMENT_SCHEMA}",
                     f"{len(listed)} tables listed, e.g. {short(sorted(listed)[:5])}")
    leaked = sorted(n for n in listed if ctx.hidden(n))
    report.check(not leaked, f"{what}: lists no analysts-only table", f"lists {short(leaked)}")
    want = ctx.expected_tables(schema)
    if want is not None:
        missing, extra = sorted(want - listed), sorted(listed - want - set(leaked))
        report.check(not missing and not extra, f"{what}: lists the tables of the lake {ctx.ident.label} sees",
                     f"missing {len(missing)} {short(missing[:5])}, not in the lake {len(extra)} {short(extra[:5])}")
    if types is not None:
        kinds = collections.Counter(k for (s, t), k in types.items() if not _is_system_schema(s))
        report.check(set(kinds) <= {"TABLE", "table", "r", "BASE TABLE"}, f"{what}: the lake's tables are tables",
                     f"kinds {dict(kinds)}")


def check_schema_listing(report, ctx, what, schemas):
    schemas = {s for s in schemas if s is not None}
    report.check(ENGAGEMENT_SCHEMA in schemas, f"{what}: lists schema {ENGAGEMENT_SCHEMA}", short(sorted(schemas)))
    leaked = sorted(schemas & ctx.hidden_schemas())
    report.check(not leaked, f"{what}: lists no schema of analysts-only tables only", f"lists {short(leaked)}")


def check_engagement_columns(report, ctx, what, got, kind):
    """got: column -> type as the query gave it; kind: 0 type name, 1 oid, 2 typname."""
    if not report.check(got, f"{what}: lists the columns of {ENGAGEMENT}", "no row"):
        return
    for col, want in ENGAGEMENT_TYPES.items():
        report.equal(got.get(col), want[kind], f"{what}: {col}")


def listing(schema_i, table_i, schema=None, type_i=None):
    def check(report, ctx, what, names, rows):
        pairs = [(r[schema_i], r[table_i]) for r in rows]
        types = {(r[schema_i], r[table_i]): r[type_i] for r in rows} if type_i is not None else None
        check_table_listing(report, ctx, what, pairs, schema, types)
    return check


def schema_listing(col):
    def check(report, ctx, what, names, rows):
        i = names.index(col) if isinstance(col, str) else col
        check_schema_listing(report, ctx, what, [r[i] for r in rows])
    return check


def columns(name_i, type_i, kind):
    def check(report, ctx, what, names, rows):
        # An oid column may come as text (a reg* type): pgjdbc reads it with getInt either way.
        def value(v):
            return int(v) if kind == 1 and isinstance(v, str) and v.isdigit() else v
        check_engagement_columns(report, ctx, what, {r[name_i]: value(r[type_i]) for r in rows}, kind)
    return check


def one_value(test, describe):
    def check(report, ctx, what, names, rows):
        value = rows[0][0] if len(rows) == 1 and rows[0] else None
        report.check(len(rows) == 1 and test(value, ctx), f"{what}: {describe}", f"got {short(rows)}")
    return check


def rows_count(n_for):
    def check(report, ctx, what, names, rows):
        n = n_for(ctx)
        report.equal(len(rows), n, f"{what}: {n} row(s)")
    return check


def provide_first(key, col=0):
    def provides(names, rows):
        return {key: rows[0][col]} if rows else {}
    return provides


def provide_nspoid(names, rows):
    i, j = names.index("nspname"), names.index("oid")
    return {"nspoid": r[j] for r in rows if r[i] == ENGAGEMENT_SCHEMA}


def isolation_level(report, ctx, what, names, rows):
    """pgjdbc maps Postgres' spelling ('read committed') to a JDBC level. The upstream
    datafusion-postgres answers 'read_committed': a known limitation, noted, not a failure."""
    value = rows[0][0] if len(rows) == 1 and rows[0] else None
    want = f"one of {sorted(ISOLATION_LEVELS)}"
    if isinstance(value, str) and value.lower() in ISOLATION_LEVELS:
        report.ok(f"{what}: {want}")
    elif isinstance(value, str) and value.lower().replace("_", " ") in ISOLATION_LEVELS:
        report.note(f"{what}: {want}", f"got {value!r} (datafusion-postgres' spelling, a known limitation)")
    else:
        report.fail(f"{what}: {want}", f"got {short(rows)}")


def search_path(report, ctx, what, names, rows):
    """After SET search_path TO "analytics.learner", public. The upstream datafusion-postgres does
    not store a search_path holding a quoted identifier (it keeps the previous one): a known
    limitation, noted, not a failure; any other answer fails."""
    value = rows[0][0] if len(rows) == 1 and rows[0] else None
    schema = ENGAGEMENT_SCHEMA
    want = f"{quote_ident(schema)}, public"
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else None
    if parts in ([quote_ident(schema), "public"], [schema, "public"]):
        report.ok(f"{what}: {want}")
    elif parts in (["public"], ['"$user"', "public"]):
        report.note(f"{what}: {want}", f"got {value!r}: the quoted identifier was not stored "
                                       "(datafusion-postgres, a known limitation)")
    else:
        report.fail(f"{what}: {want}", f"got {short(rows)}")


def _psql_pattern(name):
    # psql quotes a pattern's regular-expression characters and sends it as an E'' string.
    return "E'^(" + re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\\\1", name) + ")$'"


PSQL_DT = """SELECT n.nspname as "Schema",
  c.relname as "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' \
WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' \
WHEN 'I' THEN 'partitioned index' END as "Type",
  pg_catalog.pg_get_userbyid(c.relowner) as "Owner"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
WHERE c.relkind IN ('r','p','')
{where}
ORDER BY 1,2"""

PSQL_D_LOOKUP = """SELECT c.oid,
  n.nspname,
  c.relname
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname OPERATOR(pg_catalog.~) {table} COLLATE pg_catalog.default
  AND n.nspname OPERATOR(pg_catalog.~) {schema} COLLATE pg_catalog.default
ORDER BY 2, 3"""

JDBC_TABLE_TYPE = """CASE n.nspname ~ '^pg_' OR n.nspname = 'information_schema'
 WHEN true THEN CASE
  WHEN n.nspname = 'pg_catalog' OR n.nspname = 'information_schema' THEN CASE c.relkind
   WHEN 'r' THEN 'SYSTEM TABLE' WHEN 'v' THEN 'SYSTEM VIEW' WHEN 'i' THEN 'SYSTEM INDEX' ELSE NULL END
  WHEN n.nspname = 'pg_toast' THEN CASE c.relkind
   WHEN 'r' THEN 'SYSTEM TOAST TABLE' WHEN 'i' THEN 'SYSTEM TOAST INDEX' ELSE NULL END
  ELSE CASE c.relkind
   WHEN 'r' THEN 'TEMPORARY TABLE' WHEN 'p' THEN 'TEMPORARY TABLE' WHEN 'i' THEN 'TEMPORARY INDEX'
   WHEN 'S' THEN 'TEMPORARY SEQUENCE' WHEN 'v' THEN 'TEMPORARY VIEW' ELSE NULL END
 END
 WHEN false THEN CASE c.relkind
  WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'PARTITIONED TABLE' WHEN 'i' THEN 'INDEX' WHEN 'P' THEN 'PARTITIONED INDEX'
  WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'c' THEN 'TYPE' WHEN 'f' THEN 'FOREIGN TABLE'
  WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE NULL END
 ELSE NULL
END"""

GRAFANA_IN_SEARCH_PATH = """quote_ident(table_schema) IN (
        SELECT
          CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
        FROM
          generate_series(
            array_lower(string_to_array(current_setting('search_path'),','),1),
            array_upper(string_to_array(current_setting('search_path'),','),1)
          ) as i,
          string_to_array(current_setting('search_path'),',') s
        )"""

# Tables in the search_path by their bare name, the others qualified, those first.
GRAFANA_TABLES = f"""SELECT
  CASE WHEN
        {GRAFANA_IN_SEARCH_PATH}
    THEN quote_ident(table_name)
    ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
  END AS "table"
FROM information_schema.tables
WHERE quote_ident(table_schema) NOT IN ('information_schema',
                         'pg_catalog',
                         '_timescaledb_cache',
                         '_timescaledb_catalog',
                         '_timescaledb_internal',
                         '_timescaledb_config',
                         'timescaledb_information',
                         'timescaledb_experimental')
ORDER BY CASE WHEN
        {GRAFANA_IN_SEARCH_PATH} THEN 0 ELSE 1 END, 1"""


# Delta's primitive types -> the data_type Postgres' information_schema.columns gives the
# column type the server maps them to (as format_type names it).
DELTA_PG_TYPES = {
    "string": "text", "long": "bigint", "integer": "integer", "short": "smallint", "byte": "smallint",
    "double": "double precision", "float": "real", "boolean": "boolean", "binary": "bytea", "date": "date",
    "timestamp": "timestamp with time zone", "timestamp_ntz": "timestamp without time zone",
}
_DELTA_COLUMNS = {}


def delta_columns(path):
    """[(column, 'YES' or 'NO', Postgres data_type or None when unknown)] of the Delta table at path,
    from its own schema (delta-rs), in the table's order."""
    if path not in _DELTA_COLUMNS:
        from deltalake import DeltaTable
        cols = []
        for f in DeltaTable(path).schema().fields:
            kind = getattr(f.type, "type", None)
            if isinstance(kind, str) and kind.startswith("decimal"):
                pg_type = "numeric"
            elif type(f.type).__name__ == "ArrayType":
                pg_type = "ARRAY"
            else:
                pg_type = DELTA_PG_TYPES.get(kind) if isinstance(kind, str) else None
            cols.append((f.name, "YES" if f.nullable else "NO", pg_type))
        _DELTA_COLUMNS[path] = cols
    return _DELTA_COLUMNS[path]


def _int_or(v):
    # information_schema's cardinal_number: an integer, whatever Python type it reads as.
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, decimal.Decimal)) and v == int(v):
        return int(v)
    return v


def information_schema_columns(report, ctx, what, names, rows):
    """Exactly Postgres' answers: ordinal_position 1.. in the table's order, is_nullable 'YES' or
    'NO' as the column is nullable, data_type the Postgres type's name; with --lake, exactly the
    columns of the Delta tables the identity sees."""
    report.check({r[0] for r in rows} <= {LAKE_DB}, f"{what}: table_catalog {LAKE_DB!r}",
                 short(sorted({str(r[0]) for r in rows})))
    tables = collections.defaultdict(list)
    for r in rows:
        if not _is_system_schema(r[1]):
            tables[f"{r[1]}.{r[2]}"].append((r[3], _int_or(r[4]), r[5], r[6]))
    check_table_listing(report, ctx, what, [tuple(n.rsplit(".", 1)) for n in tables])
    bad = collections.defaultdict(list)  # property -> examples
    for name, cols in sorted(tables.items()):
        positions = [c[1] for c in cols]
        if positions != list(range(1, len(cols) + 1)):
            bad["ordinal_position"].append(f"{name}: {short(positions, 80)}")
        for col, _, nullable, _ in cols:
            if nullable not in ("YES", "NO"):
                bad["is_nullable"].append(f"{name}.{col}: {nullable!r}")
        if ctx.model is None or name not in ctx.model.lake.tables or ctx.hidden(name):
            continue
        want = delta_columns(ctx.model.lake.tables[name].path)
        if [c[0] for c in cols] != [w[0] for w in want]:
            bad["column_name"].append(f"{name}: {short([c[0] for c in cols], 120)}, "
                                      f"the lake {short([w[0] for w in want], 120)}")
            continue
        for (col, _, nullable, data_type), (_, want_nullable, want_type) in zip(cols, want):
            if nullable in ("YES", "NO") and nullable != want_nullable:
                bad["is_nullable"].append(f"{name}.{col}: {nullable!r}, the lake {want_nullable!r}")
            if want_type is not None and data_type != want_type:
                bad["data_type"].append(f"{name}.{col}: {data_type!r}, want {want_type!r}")
    checks = {"ordinal_position": "1, 2, ... in each table's order", "is_nullable": "'YES' or 'NO' as nullable",
              "data_type": "the Postgres type's name", "column_name": "the lake's columns, in order"}
    for prop, describe in checks.items():
        if ctx.model is None and prop in ("data_type", "column_name"):
            continue
        examples = bad[prop]
        report.check(not examples, f"{what}: {prop} is {describe}",
                     f"{len(examples)} wrong, e.g. {'; '.join(examples[:4])}")


def parse_qualified(text, default_schema="public"):
    """(schema, table) of a quote_ident'ed name, qualified or not."""
    parts = [q.replace('""', '"') if q else bare for q, bare in re.findall(r'"((?:[^"]|"")*)"|([^".]+)', text)]
    return (default_schema, parts[0]) if len(parts) == 1 else (parts[0], parts[-1])


def introspection_probes():
    E_S, E_T = ENGAGEMENT_SCHEMA, ENGAGEMENT_TABLE
    H_S, H_T = HIDDEN_EXAMPLE.rsplit(".", 1)
    qualified = f"{quote_ident(E_S)}.{E_T}"
    def grafana_tables(report, ctx, what, names, rows):
        # search_path is public, which holds none of the lake's tables: every one qualified.
        check_table_listing(report, ctx, what, [parse_qualified(r[0]) for r in rows])

    def information_schema_tables(report, ctx, what, names, rows):
        report.check({r[0] for r in rows} == {LAKE_DB}, f"{what}: table_catalog {LAKE_DB!r}",
                     short(sorted({r[0] for r in rows})))
        check_table_listing(report, ctx, what, [(r[1], r[2]) for r in rows])

    def information_schema_table_types(report, ctx, what, names, rows):
        check_table_listing(report, ctx, what, [(r[0], r[1]) for r in rows])
        kinds = collections.Counter(r[2] for r in rows if not _is_system_schema(r[0]))
        report.check(set(kinds) == {"BASE TABLE"}, f"{what}: every table of the lake is a 'BASE TABLE'",
                     f"table_type {dict(kinds)}")

    return [
        # psql 15
        Probe("psql", "SELECT version()", "SELECT version()",
              one_value(lambda v, c: isinstance(v, str) and v.strip() != "", "a version string")),
        Probe("psql", "\\dt", PSQL_DT.format(where="""      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
      AND n.nspname <> 'information_schema'
  AND pg_catalog.pg_table_is_visible(c.oid)"""), listing(0, 1, type_i=2)),
        Probe("psql", f"\\dt {quote_ident(E_S)}.*", PSQL_DT.format(where=f"""      AND n.nspname !~ '^pg_toast'
  AND n.nspname OPERATOR(pg_catalog.~) {_psql_pattern(E_S)} COLLATE pg_catalog.default"""),
              listing(0, 1, schema=E_S, type_i=2)),
        Probe("psql", "\\dn", """SELECT n.nspname AS "Name",
  pg_catalog.pg_get_userbyid(n.nspowner) AS "Owner"
FROM pg_catalog.pg_namespace n
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
ORDER BY 1""", schema_listing(0)),
        Probe("psql", f"\\d {qualified} (1: the relation's oid)",
              PSQL_D_LOOKUP.format(table=_psql_pattern(E_T), schema=_psql_pattern(E_S)),
              rows_count(lambda c: 1), provides=provide_first("relid")),
        Probe("psql", f"\\d {qualified} (2: the relation)", """SELECT c.relchecks, c.relkind, c.relhasindex, \
c.relhasrules, c.relhastriggers, c.relrowsecurity, c.relforcerowsecurity, false AS relhasoids, c.relispartition, '', \
c.reltablespace, CASE WHEN c.reloftype = 0 THEN '' ELSE c.reloftype::pg_catalog.regtype::pg_catalog.text END, \
c.relpersistence, c.relreplident, am.amname
FROM pg_catalog.pg_class c
 LEFT JOIN pg_catalog.pg_class tc ON (c.reltoastrelid = tc.oid)
LEFT JOIN pg_catalog.pg_am am ON (c.relam = am.oid)
WHERE c.oid = '<relid>'""", lambda report, ctx, what, names, rows: report.check(
            len(rows) == 1 and rows[0][1] == "r", f"{what}: one row, relkind 'r'", short(rows))),
        Probe("psql", f"\\d {qualified} (3: the columns)", """SELECT a.attname,
  pg_catalog.format_type(a.atttypid, a.atttypmod),
  (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true)
   FROM pg_catalog.pg_attrdef d
   WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef),
  a.attnotnull,
  (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t
   WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation) AS attcollation,
  a.attidentity,
  a.attgenerated
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = '<relid>' AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum""", columns(0, 1, 0)),
        Probe("psql", f"\\d {HIDDEN_EXAMPLE} (1: the relation's oid)",
              PSQL_D_LOOKUP.format(table=_psql_pattern(H_T), schema=_psql_pattern(H_S)),
              rows_count(lambda c: 0 if c.hidden(HIDDEN_EXAMPLE) else 1)),
        # pgjdbc 42 (DBeaver, Metabase): its startup, then DatabaseMetaData
        Probe("pgjdbc", "startup: extra_float_digits", "SET extra_float_digits = 3", extended=True),
        Probe("pgjdbc", "startup: application_name", "SET application_name = 'PostgreSQL JDBC Driver'", extended=True),
        Probe("pgjdbc", "getTransactionIsolation", "SHOW TRANSACTION ISOLATION LEVEL", isolation_level,
              extended=True),
        Probe("pgjdbc", "getSchema", "select current_schema()",
              one_value(lambda v, c: v == "public", "public"), extended=True),
        Probe("pgjdbc", "current database", "SELECT current_database()",
              one_value(lambda v, c: v == LAKE_DB, repr(LAKE_DB)), extended=True),
        Probe("pgjdbc", "getSchemas", """SELECT nspname AS TABLE_SCHEM, NULL AS TABLE_CATALOG
FROM pg_catalog.pg_namespace
WHERE nspname <> 'pg_toast'
  AND (nspname !~ '^pg_temp_' OR nspname = (pg_catalog.current_schemas(true))[1])
  AND (nspname !~ '^pg_toast_temp_' OR nspname = replace((pg_catalog.current_schemas(true))[1], 'pg_temp_', \
'pg_toast_temp_'))
ORDER BY TABLE_SCHEM""", schema_listing(0), extended=True),
        Probe("pgjdbc", "getTables(null, null, '%', {TABLE, PARTITIONED TABLE, VIEW})",
              f"""SELECT NULL AS TABLE_CAT, n.nspname AS TABLE_SCHEM, c.relname AS TABLE_NAME,
{JDBC_TABLE_TYPE} AS TABLE_TYPE, d.description AS REMARKS,
'' as TYPE_CAT, '' as TYPE_SCHEM, '' as TYPE_NAME, '' AS SELF_REFERENCING_COL_NAME, '' AS REF_GENERATION
FROM pg_catalog.pg_namespace n, pg_catalog.pg_class c
LEFT JOIN pg_catalog.pg_description d ON (c.oid = d.objoid AND d.objsubid = 0 and d.classoid = 'pg_class'::regclass)
WHERE c.relnamespace = n.oid AND c.relname LIKE '%'
  AND (false
    OR ( c.relkind = 'r' AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' )
    OR ( c.relkind = 'p' AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' )
    OR ( c.relkind = 'v' AND n.nspname <> 'pg_catalog' AND n.nspname <> 'information_schema' ) )
ORDER BY TABLE_TYPE,TABLE_SCHEM,TABLE_NAME""", listing(1, 2, type_i=3), extended=True),
        Probe("pgjdbc", f"getColumns(null, '{E_S}', '{E_T}', '%')", f"""SELECT * FROM (
SELECT n.nspname,c.relname,a.attname,a.atttypid,a.attnotnull OR (t.typtype = 'd' AND t.typnotnull) AS attnotnull,
  a.atttypmod,a.attlen,t.typtypmod,row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum) AS attnum,
  nullif(a.attidentity, '') as attidentity,nullif(a.attgenerated, '') as attgenerated,
  pg_catalog.pg_get_expr(def.adbin, def.adrelid) AS adsrc,dsc.description,t.typbasetype,t.typtype
FROM pg_catalog.pg_namespace n
JOIN pg_catalog.pg_class c ON (c.relnamespace = n.oid)
JOIN pg_catalog.pg_attribute a ON (a.attrelid=c.oid)
JOIN pg_catalog.pg_type t ON (a.atttypid = t.oid)
LEFT JOIN pg_catalog.pg_attrdef def ON (a.attrelid=def.adrelid AND a.attnum = def.adnum)
LEFT JOIN pg_catalog.pg_description dsc ON (c.oid=dsc.objoid AND a.attnum = dsc.objsubid)
LEFT JOIN pg_catalog.pg_class dc ON (dc.oid=dsc.classoid AND dc.relname='pg_class')
LEFT JOIN pg_catalog.pg_namespace dn ON (dc.relnamespace=dn.oid AND dn.nspname='pg_catalog')
WHERE c.relkind in ('r','p','v','f','m') and a.attnum > 0 AND NOT a.attisdropped
  AND n.nspname LIKE '{E_S}' AND c.relname LIKE '{E_T}') c
WHERE true
ORDER BY nspname,c.relname,attnum""", columns(2, 3, 1), extended=True),
        Probe("pgjdbc", "TypeInfoCache: the type of oid 1184", """SELECT n.nspname = ANY(current_schemas(true)), \
n.nspname, t.typname
FROM pg_catalog.pg_type t
JOIN pg_catalog.pg_namespace n ON t.typnamespace = n.oid
WHERE t.oid = %s""", lambda report, ctx, what, names, rows: report.equal(
            [tuple(r[1:]) for r in rows], [("pg_catalog", "timestamptz")], f"{what}: pg_catalog.timestamptz"),
              extended=True, params=lambda c: (_int4(1184),)),
        # DBeaver 24: the navigator's schemas, then a schema's tables
        Probe("DBeaver", "session", "SELECT current_schema(),session_user",
              lambda report, ctx, what, names, rows: report.equal(
                  rows, [("public", ctx.ident.sub)], f"{what}: public and the connecting user"), extended=True),
        Probe("DBeaver", "schemas", """SELECT n.oid,n.*,d.description FROM pg_catalog.pg_namespace n
LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=n.oid AND d.objsubid=0 AND \
d.classoid='pg_namespace'::regclass
ORDER BY nspname""", schema_listing("nspname"), extended=True, provides=provide_nspoid),
        Probe("DBeaver", f"tables of {E_S}", """SELECT c.oid,c.*,t.relname as tabrelname,rt.relnamespace as \
refnamespace,d.description, null as consrc_copy
FROM pg_catalog.pg_class c
LEFT OUTER JOIN pg_catalog.pg_class t ON t.oid=c.reltoastrelid
LEFT OUTER JOIN pg_catalog.pg_class rt ON rt.oid=c.reloftype AND rt.relkind='c'
LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=c.oid AND d.objsubid=0 AND d.classoid='pg_class'::regclass
WHERE c.relnamespace=%s AND c.relkind not in ('i','I','c')
ORDER BY c.oid""", lambda report, ctx, what, names, rows: check_table_listing(
            report, ctx, what, [(E_S, r[names.index("relname")]) for r in rows], E_S,
            {(E_S, r[names.index("relname")]): r[names.index("relkind")] for r in rows}),
              extended=True, params=lambda c: (_int8(c.values["nspoid"]),)),
        # Grafana's PostgreSQL data source: the connection test, the table and column pickers
        Probe("Grafana", "connection test", "SELECT 1", one_value(lambda v, c: v == 1, "1"), extended=True),
        Probe("Grafana", "table picker", GRAFANA_TABLES, grafana_tables, extended=True),
        Probe("Grafana", f"column picker for {qualified}", f"""select quote_ident(column_name) as "column", \
data_type as "type"
from information_schema.columns
where table_schema = (parse_ident('{qualified}'))[1]
  and table_name = (parse_ident('{qualified}'))[2]
order by ordinal_position""", columns(0, 1, 0), extended=True),
        Probe("information_schema", "the lake's tables", f"""select table_catalog, table_schema, table_name
from information_schema.tables
where table_type = 'BASE TABLE' and table_catalog = current_database()
  and table_schema not in ('information_schema', 'pg_catalog')
order by 2, 3""", information_schema_tables, extended=True),
        Probe("information_schema", "the lake's tables' table_type", f"""select table_schema, table_name, table_type
from information_schema.tables
where table_catalog = current_database() and table_schema not in ('information_schema', 'pg_catalog')
order by 1, 2""", information_schema_table_types, extended=True),
        Probe("information_schema", "the lake's columns", f"""select table_catalog, table_schema, table_name, column_name, ordinal_position, is_nullable, data_type
from information_schema.columns
where table_schema not in ('information_schema', 'pg_catalog')
order by table_schema, table_name, ordinal_position""", information_schema_columns, extended=True),
        # psql users (and a role's settings) point the search_path at a schema of the lake.
        Probe("session", f"SET search_path TO {quote_ident(E_S)}, public",
              f"SET search_path TO {quote_ident(E_S)}, public"),
        Probe("session", "SHOW search_path", "SHOW search_path", search_path),
    ]


def _int4(v):
    from psycopg.types.numeric import Int4
    return Int4(v)


def _int8(v):
    from psycopg.types.numeric import Int8
    return Int8(v)


def cmd_introspection(args):
    report = Report(args.verbose)
    if not wait_for_port(args.pg_port, args.wait):
        print(f"nothing listens on 127.0.0.1:{args.pg_port}", file=sys.stderr)
        return 2
    model = Model(Lake(args.lake)) if args.lake else None
    pg = LakePg(args.pg_port, args.secret)
    idents = [ANALYST]
    if model is not None:
        idents += [i for i in choose_identities(model.lake) if i.role == "learner" and i.sub in model.lake.users][:1]
    idents.append(Identity("nobody", "nobody", "learner"))
    for ident in idents:
        report.section(f"client introspection as {ident}")
        report.guard(f"{ident} introspection", check_introspection, report, pg, ident, model)
    report.section("oids within and across connections (analyst)")
    report.guard("oids across connections", check_oid_stability, report, pg)
    report.section("result column types (analyst)")
    report.guard("result column types", check_result_types, report, pg)
    return report.finish("introspection")


def check_introspection(report, pg, ident, model):
    """Every probe answers, over each protocol its client uses, with plausible rows."""
    psycopg = _psycopg()
    sess = Session(pg, ident, report)
    ctx = IntrospectionCtx(ident, model)
    for probe in introspection_probes():
        sql = probe.sql
        needed = [k for k in re.findall(r"<(\w+)>", sql) if k not in ctx.values]
        try:
            params = probe.params(ctx) if probe.params else None
        except KeyError as e:
            needed.append(str(e).strip("'"))
        label = f"{probe.client}: {probe.name}"
        if needed:
            report.fail(label, f"not run: needs {needed} from an earlier query, which failed")
            continue
        for k, v in ctx.values.items():
            sql = sql.replace(f"<{k}>", str(v))
        if params is not None:
            runs = [("extended", False), ("prepared", True)]
        else:
            runs = [("simple", None)] + ([("prepared", True)] if probe.extended else [])
        for proto, prepare in runs:
            what = f"{label} ({proto})"
            try:
                names, rows = sess.query(sql, params, prepare)
            except psycopg.Error as e:
                report.fail(what, f"{type(e).__name__} [{e.sqlstate}]: {one_line(e)}")
                print("        " + sql.replace("\n", "\n        "), flush=True)
                sess.alive(what)
                continue
            report.ok(what)
            print(f"   answered {what}: {len(rows)} row(s){'' if not rows else ', e.g. ' + short(rows[0], 120)}",
                  flush=True)
            if probe.check:
                report.guard(f"{what}: check", probe.check, report, ctx, what, names, rows)
            if probe.provides:
                ctx.values.update(probe.provides(names, rows))
    sess.close()


def check_oid_stability(report, pg):
    """A schema's and a table's oids stay the same within a connection, whichever catalog it read
    first, and pg_class.relnamespace is pg_namespace's oid: DBeaver reads a schema's oid and then
    asks for its tables by it (c.relnamespace=?). Across connections of an identity the upstream
    datafusion-pg-catalog numbers them afresh (in the order a connection reads them): a known
    limitation, noted, not a failure."""
    nsp = f"SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = '{ENGAGEMENT_SCHEMA}'"
    rel = (f"SELECT c.oid, c.relnamespace FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
           f"ON n.oid = c.relnamespace WHERE n.nspname = '{ENGAGEMENT_SCHEMA}' AND c.relname = '{ENGAGEMENT_TABLE}'")
    schema_what, table_what = f"schema {ENGAGEMENT_SCHEMA}", f"table {ENGAGEMENT}"

    def oid(v):  # relnamespace may come as text (a reg* type)
        return int(v) if isinstance(v, str) and v.isdigit() else v

    seen = {}
    for order in ((nsp, rel), (rel, nsp), (nsp, rel)):
        label = "pg_namespace first" if order[0] is nsp else "pg_class first"
        sess = Session(pg, ANALYST, report)
        got = collections.defaultdict(list)
        for sql in order + order[::-1]:
            got[sql].append(sess.query(sql)[1])
        sess.close()
        print(f"   {label}: {schema_what} {short(got[nsp])}, {table_what} {short(got[rel])}", flush=True)
        if not (report.check(all(len(r) == 1 for r in got[nsp]), f"{schema_what}: one oid ({label})",
                             short(got[nsp]))
                and report.check(all(len(r) == 1 for r in got[rel]), f"{table_what}: one oid ({label})",
                                 short(got[rel]))):
            continue
        nsp_oids = [oid(r[0][0]) for r in got[nsp]]
        rel_oids = [oid(r[0][0]) for r in got[rel]]
        rel_nsps = [oid(r[0][1]) for r in got[rel]]
        report.check(len(set(nsp_oids)) == 1, f"{schema_what}: the same oid twice on one connection ({label})",
                     short(nsp_oids))
        report.check(len(set(rel_oids)) == 1, f"{table_what}: the same oid twice on one connection ({label})",
                     short(rel_oids))
        report.check(set(rel_nsps) == set(nsp_oids[:1]),
                     f"{table_what}: relnamespace is {schema_what}'s oid on the connection ({label})",
                     f"relnamespace {short(rel_nsps)}, pg_namespace.oid {short(nsp_oids)}")
        for what, value in ((schema_what, nsp_oids[0]), (table_what, rel_oids[0])):
            if what not in seen:
                seen[what] = (label, value)
            elif value == seen[what][1]:
                report.ok(f"{what}: the same oid with {label} as with {seen[what][0]}")
            else:
                report.note(f"{what}: the same oid on another connection ({label} vs {seen[what][0]})",
                            f"{value} here, {seen[what][1]} with {seen[what][0]} (datafusion-pg-catalog "
                            "numbers oids per connection, a known limitation)")


# The result columns' types as psycopg sees them: SQL, then column -> (allowed oids, Python type, value or None).
RESULT_TYPES = [
    (f"SELECT window_start, date, interactions, avg_latency_ms, user_id FROM {ENGAGEMENT} LIMIT 1",
     {"window_start": ({1184}, dt.datetime, None), "date": ({1082}, dt.date, None),
      "interactions": ({20}, int, None), "avg_latency_ms": ({701}, float, None), "user_id": ({25, 1043}, str, None)}),
    ("SELECT slo_breached FROM monitoring.api_performance.request_response_times LIMIT 1",
     {"slo_breached": ({16}, bool, None)}),
    ("SELECT sha256('x') AS digest, decode('00ff', 'hex') AS raw, CAST('ab' AS BYTEA) AS cast_raw",
     {"digest": ({17}, bytes, hashlib.sha256(b"x").digest()), "raw": ({17}, bytes, b"\x00\xff"),
      "cast_raw": ({17}, bytes, b"ab")}),
]


def check_result_types(report, pg):
    """cursor.description's type_code per column, and the Python value psycopg made of it, over the
    simple protocol, a prepared statement, and binary results (pgjdbc's binary transfer)."""
    psycopg = _psycopg()
    conn = pg.connect(ANALYST)
    for sql, want in RESULT_TYPES:
        for proto, kwargs in (("simple", {}), ("prepared", {"prepare": True}), ("binary", {"binary": True})):
            what = f"{sql} ({proto})"
            try:
                with conn.cursor() as cur:
                    cur.execute(sql, **kwargs)
                    desc = [(c.name, c.type_code) for c in cur.description]
                    rows = cur.fetchall()
            except psycopg.Error as e:
                report.fail(what, f"{type(e).__name__} [{e.sqlstate}]: {one_line(e)}")
                if conn.closed:
                    conn = pg.connect(ANALYST)
                continue
            print(f"   {what}: {desc}", flush=True)
            got = dict(desc)
            report.check(len(rows) == 1, f"{what}: one row", short(rows))
            for i, (col, (oids, pytype, expected)) in enumerate(want.items()):
                report.check(got.get(col) in oids, f"{what}: {col} has type oid {sorted(oids)}",
                             f"got {got.get(col)!r}")
                if rows and rows[0][i] is not None:
                    value = rows[0][i]
                    ok = isinstance(value, pytype) and not (pytype is dt.date and isinstance(value, dt.datetime)) \
                        and not (pytype is int and isinstance(value, bool))
                    if ok and pytype is dt.datetime:
                        ok = value.tzinfo is not None
                    report.check(ok, f"{what}: {col} reads as {pytype.__name__}"
                                     f"{' with a time zone' if pytype is dt.datetime else ''}",
                                 f"got {type(value).__name__} {value!r}")
                    if expected is not None:
                        report.equal(bytes(value) if isinstance(value, memoryview) else value, expected,
                                     f"{what}: {col}'s value")
    conn.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    def common(p, lake=False, http=False, pg=True):
        if lake:
            p.add_argument("--lake", required=True, help="the lake's local directory")
        if pg:
            p.add_argument("--pg-port", type=int, required=True)
            p.add_argument("--secret", required=True, help="the JWT secret the server was started with")
            p.add_argument("--wait", type=float, default=10, help="seconds to wait for the ports to answer")
            p.add_argument("--timeout", type=float, default=900, help="give up (with a traceback) after this long")
            p.add_argument("-v", "--verbose", action="store_true", help="print passing checks too")
        if http:
            p.add_argument("--http-port", type=int, required=True)

    p = sub.add_parser("model", help="identities and visible rows per table, from the lake")
    common(p, lake=True, pg=False)
    p.add_argument("--all", action="store_true", help="every table, not only the matrix's")
    common(sub.add_parser("matrix", help="SQL and REST per identity against the model"), lake=True, http=True)
    common(sub.add_parser("refusals", help="refused statements and passwords"))
    common(sub.add_parser("isolation", help="settings stay on their connection"))
    common(sub.add_parser("repeat", help="statements run again follow the lake and the clock"), lake=True)
    p = sub.add_parser("introspection", help="the catalog queries of psql, pgjdbc, DBeaver and Grafana")
    common(p)
    p.add_argument("--lake", help="the lake's local directory: the listings are then compared with its tables")
    args = parser.parse_args(argv)
    if getattr(args, "timeout", None):
        faulthandler.dump_traceback_later(args.timeout, exit=True)
    return {"model": cmd_model, "matrix": cmd_matrix, "refusals": cmd_refusals,
            "isolation": cmd_isolation, "introspection": cmd_introspection, "repeat": cmd_repeat}[args.cmd](args)


def exit_now(code):
    # delta-rs's runtime can abort the interpreter's shutdown ("terminate called
    # without an active exception", delta-io/delta-rs#2184): leave without it.
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    try:
        status = main()
    except SystemExit as e:
        status = e.code
    exit_now(status)
