#!/usr/bin/env python3
"""A SQL fuzzer for `sluice serve`, in the manner of SQLancer and sqlsmith.

It generates random statements over the served schema (the lake's own tables and
columns, read with delta-rs): deep nesting, long IN lists and OR chains, huge
literals, functions with odd arguments, joins and cross joins, subqueries, window
functions, unions, CTEs, and plain garbage. It runs them as every role of
`clients.choose_identities`, over the simple and the extended protocol, and
checks oracles instead of fixed answers:

  * the server never dies: its pid stays alive and a new connection answers;
  * every statement ends with rows or an error that carries a SQLSTATE, within
    its time limit plus a grace (no hang);
  * the policy: no row and no error message a non-analyst gets names a user or
    organisation id that the model of `clients.py` (the rules, over the lake read
    independently) says it may not read;
  * ternary logic partitioning (SQLancer's TLP): for a table and a predicate p,
    count(*) WHERE p, WHERE NOT p and WHERE p IS NULL add up to count(*), for
    every role (the policy filter and the engine agree on every row).

A panic caught by the server (SQLSTATE XX000, "a bug in Sluice") is a finding:
printed as a NOTE with its statement, not a failure, because the server went on.
Statements that failed an oracle are written to --save, one file each, and
--replay DIR runs every *.sql file of a directory first (the regressions).

  fuzz_sql.py --lake DIR --pg-port P --secret S --pid PID [--seconds 60] [--seed N]
              [--replay DIR] [--save DIR]

Exit 0 when every oracle held; 1 with each failure listed.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clients  # noqa: E402  (the model, tokens and connections)

TIME_LIMIT_MS = 2000
GRACE_S = 4.0

NUMERIC_FUNCTIONS = ["abs", "ceil", "floor", "round", "sqrt", "ln", "log10", "exp", "sign", "cbrt", "degrees", "signum"]
TEXT_FUNCTIONS = ["upper", "lower", "length", "md5", "sha256", "trim", "reverse", "initcap", "ascii", "btrim", "to_hex", "octet_length"]
ODD_CALLS = [
    "repeat({s}, {i})", "lpad({s}, {i}, 'ab')", "rpad({s}, {i})", "substr({s}, {i}, {i})", "split_part({s}, '-', {i})",
    "regexp_replace({s}, '(.)', '\\1\\1', 'g')", "replace({s}, '-', {s})", "left({s}, {i})", "right({s}, {i})",
    "strpos({s}, {s})", "translate({s}, 'abc', 'x')", "concat_ws({s}, {s}, {s})", "nullif({s}, {s})",
    "power({n}, {n})", "mod({i}, {i})", "{n} / {n}", "{i} % {i}", "gcd({i}, {i})", "lcm({i}, {i})", "factorial({i})",
    "to_timestamp({s})", "date_trunc({s}, now())", "date_part({s}, now())", "to_char(now(), {s})",
    "make_array({n}, {n})", "array_length(make_array({n}))", "range({i}, {i})", "generate_series({i}, {i})",
    "array_repeat({n}, {i})", "cardinality(string_to_array({s}, '-'))", "coalesce({n}, {n})", "greatest({n}, {n})",
    "CAST({s} AS INT)", "TRY_CAST({s} AS DOUBLE)", "CAST({n} AS TIMESTAMP)", "CAST({i} AS DATE)", "uuid()", "random()",
    "regexp_like({s}, {s})", "{s} ~ {s}", "{s} LIKE {s}", "{s} SIMILAR TO {s}", "starts_with({s}, {s})",
]
ODD_INTS = ["0", "-1", "1", "2147483647", "-2147483648", "9223372036854775807", "-9223372036854775808", "1000000000000", "NULL"]
ODD_NUMBERS = ODD_INTS + ["0.0", "-0.0", "1e308", "-1e308", "1e-308", "'NaN'::double", "'inf'::double", "3.14159"]
ODD_TEXT = ["''", "'a'", "'%'", "'_'", "'\\'", "'(('", "'[a-'", "'.*'", "'🦀'", "'year'", "'bogus'", "'2026-13-45'", "'u-1'", "NULL",
            "'x'' OR ''1''=''1'", "E'\\x00'", "'YYYY-MM-DD HH24'"]


class Schema:
    """The tables of the lake with their columns' kinds (num, int, text, bool, time, date)."""

    def __init__(self, lake):
        self.tables = {}
        for name, table in lake.tables.items():
            kinds = {}
            for column in table.columns:
                sample = next((r[column] for r in table.rows if r[column] is not None), None)
                kinds[column] = kind_of(sample)
            self.tables[name] = kinds

    def columns(self, table, kind=None):
        return [c for c, k in self.tables[table].items() if kind is None or k == kind]


def kind_of(value):
    import datetime as dt
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "num"
    if isinstance(value, dt.datetime):
        return "time"
    if isinstance(value, dt.date):
        return "date"
    return "text"


def quoted(name):
    return clients.quote_ident(name)


class Generator:
    """Random SQL over the schema, from a seeded random source (reproducible per seed)."""

    def __init__(self, schema, rng):
        self.schema, self.rng = schema, rng
        # The tables the next statement's identity may read, to draw from most of the time.
        self.preferred = []

    def pick(self, seq):
        return self.rng.choice(seq)

    def chance(self, p):
        return self.rng.random() < p

    def column(self, table, alias, kind=None):
        columns = self.schema.columns(table, kind) or self.schema.columns(table)
        return f"{alias}.{quoted(self.pick(columns))}"

    def value(self, table, alias, kind, depth):
        """An expression of roughly `kind` (num, int, text, bool)."""
        r = self.rng.random()
        if depth <= 0 or r < 0.3:
            if kind in ("num", "int") and self.chance(0.6):
                return self.column(table, alias, self.pick(["num", "int"]))
            if kind == "text" and self.chance(0.6):
                return self.column(table, alias, "text")
            if kind == "bool":
                return self.predicate(table, alias, 0)
            return self.literal(kind)
        if r < 0.5 and kind in ("num", "int"):
            op = self.pick(["+", "-", "*", "/", "%"])
            return f"({self.value(table, alias, kind, depth - 1)} {op} {self.value(table, alias, kind, depth - 1)})"
        if r < 0.6 and kind in ("num", "int"):
            return f"{self.pick(NUMERIC_FUNCTIONS)}({self.value(table, alias, 'num', depth - 1)})"
        if r < 0.7 and kind == "text":
            return f"{self.pick(TEXT_FUNCTIONS)}({self.value(table, alias, 'text', depth - 1)})"
        if r < 0.8:
            return self.odd_call(table, alias, depth)
        if r < 0.9:
            return (f"CASE WHEN {self.predicate(table, alias, depth - 1)} THEN {self.value(table, alias, kind, depth - 1)} "
                    f"ELSE {self.value(table, alias, kind, depth - 1)} END")
        return f"CAST({self.value(table, alias, self.pick(['num', 'text', 'int']), depth - 1)} AS {self.pick(['INT', 'BIGINT', 'DOUBLE', 'TEXT', 'BOOLEAN', 'DATE'])})"

    def odd_call(self, table, alias, depth):
        template = self.pick(ODD_CALLS)
        fill = {
            "s": lambda: self.value(table, alias, "text", depth - 1) if self.chance(0.5) else self.pick(ODD_TEXT),
            "i": lambda: self.pick(ODD_INTS) if self.chance(0.6) else self.value(table, alias, "int", depth - 1),
            "n": lambda: self.pick(ODD_NUMBERS) if self.chance(0.5) else self.value(table, alias, "num", depth - 1),
        }
        out, i = "", 0
        while i < len(template):
            if template[i] == "{" and template[i + 2] == "}":
                out += fill[template[i + 1]]()
                i += 3
            else:
                out += template[i]
                i += 1
        return out

    def literal(self, kind):
        if kind in ("num", "int"):
            return self.pick(ODD_NUMBERS if kind == "num" else ODD_INTS)
        if kind == "text":
            if self.chance(0.03):
                return "'" + "x" * self.pick([1000, 17000, 70000]) + "'"
            return self.pick(ODD_TEXT)
        return self.pick(["TRUE", "FALSE", "NULL"])

    def predicate(self, table, alias, depth):
        r = self.rng.random()
        if depth <= 0 or r < 0.35:
            kind = self.pick(["num", "int", "text"])
            op = self.pick(["=", "<>", "<", ">=", "IS NOT DISTINCT FROM"])
            return f"{self.column(table, alias, kind)} {op} {self.value(table, alias, kind, 1)}"
        if r < 0.5:
            return f"({self.predicate(table, alias, depth - 1)} {self.pick(['AND', 'OR'])} {self.predicate(table, alias, depth - 1)})"
        if r < 0.55:
            return f"NOT ({self.predicate(table, alias, depth - 1)})"
        if r < 0.62:
            return f"{self.column(table, alias)} IS {self.pick(['', 'NOT '])}NULL"
        if r < 0.7:
            n = self.pick([1, 3, 50, 1000, 20000])
            items = ", ".join(self.literal("text") if self.chance(0.5) else str(self.rng.randint(-5, 5)) for _ in range(n))
            return f"{self.column(table, alias, 'text')} IN ({items})"
        if r < 0.75:
            n = self.pick([10, 300, 1200])
            col = self.column(table, alias, "text")
            return "(" + " OR ".join(f"{col} = 'v{i}'" for i in range(n)) + ")"
        if r < 0.8:
            return f"{self.column(table, alias, 'text')} LIKE {self.pick(ODD_TEXT)}"
        if r < 0.85:
            return f"{self.column(table, alias, 'num')} BETWEEN {self.literal('num')} AND {self.literal('num')}"
        if r < 0.9:
            other = self.pick(list(self.schema.tables))
            col = self.column(other, "s")
            return f"{self.column(table, alias)} IN (SELECT {col} FROM {other} s LIMIT {self.rng.randint(0, 50)})"
        if r < 0.95:
            other = self.pick(list(self.schema.tables))
            return f"EXISTS (SELECT 1 FROM {other} s WHERE {self.predicate(other, 's', depth - 1)})"
        deep = self.pick([20, 200, 900, 1500])
        return "(" * deep + self.predicate(table, alias, 0) + ")" * deep if deep < 60 else \
            " AND ".join([self.predicate(table, alias, 0)] * deep)

    def statement(self):
        """One statement, mostly SELECTs of every shape, sometimes garbage."""
        r = self.rng.random()
        table = self.pick(self.preferred or list(self.schema.tables))
        if r < 0.04:
            return self.garbage()
        if r < 0.08:
            return self.pick([
                "SELECT 1" + "+1" * self.pick([500, 999, 2000, 6000]),
                "SELECT " + "(" * self.pick([40, 49, 60, 200]) + "1" + ")" * 200,
                " UNION ALL ".join(["SELECT 1 AS x"] * self.pick([10, 500, 1500])),
                f"SELECT count(*) FROM {table} a, {table} b, {table} c",
                f"SELECT * FROM {table} a CROSS JOIN {table} b ORDER BY 1 LIMIT 3",
                f"SELECT count(*) FROM generate_series(1, 1000000000000)",
                f"SELECT array_agg(x) FROM generate_series(1, 100000000) t(x)",
                f"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
            ])
        a = "t"
        exprs = []
        for _ in range(self.rng.randint(1, 4)):
            kind = self.pick(["num", "int", "text"])
            exprs.append(self.value(table, a, kind, self.rng.randint(0, 4)))
        aggregate = self.chance(0.3)
        if aggregate:
            wrap = lambda e: self.pick([f"count({e})", f"sum({e})", f"min({e})", f"max({e})", f"avg({e})", f"count(DISTINCT {e})"])
            exprs = [wrap(e) for e in exprs[:2]] + ["count(*)"]
        if self.chance(0.15):
            exprs.append(f"row_number() OVER (PARTITION BY {self.column(table, a)} ORDER BY {self.column(table, a)})")
        if self.chance(0.1):
            exprs.append(f"(SELECT max({self.column(table, 's')}) FROM {table} s)")
        sql = f"SELECT {'DISTINCT ' if self.chance(0.1) else ''}{', '.join(exprs)} FROM {table} {a}"
        if self.chance(0.2):
            other = self.pick(list(self.schema.tables))
            join = self.pick(["JOIN", "LEFT JOIN", "FULL JOIN", "CROSS JOIN"])
            on = "" if join == "CROSS JOIN" else f" ON {self.column(table, a)} = {self.column(other, 'o')}"
            sql += f" {join} {other} o{on}"
        if self.chance(0.7):
            sql += f" WHERE {self.predicate(table, a, self.rng.randint(0, 3))}"
        if aggregate and self.chance(0.5):
            sql += f" GROUP BY {self.column(table, a)}"
        if self.chance(0.3):
            sql += f" ORDER BY 1{' DESC' if self.chance(0.5) else ''}"
        if self.chance(0.6):
            sql += f" LIMIT {self.pick(['0', '1', '10', '100', '9223372036854775807'])}"
        if self.chance(0.08):
            sql = f"WITH w AS ({sql}) SELECT * FROM w UNION ALL SELECT * FROM w"
        if self.chance(0.05):
            sql = f"EXPLAIN {self.pick(['', 'ANALYZE '])}{sql}"
        return sql

    def garbage(self):
        pieces = ["SELECT", "FROM", "WHERE", "(", ")", "'", '"', ",", "*", ";", "--", "/*", "$1", "::", "[", "]", "\\", "\x00",
                  "INSERT", "DROP", "COPY", "SET", "pg_sleep(10)", "🦀", "\ufffd"]
        return " ".join(self.pick(pieces) for _ in range(self.rng.randint(1, 30)))

    def plain_predicate(self, table, alias, depth):
        """A deterministic predicate over columns and literals (no subquery, LIMIT or
        random()): the same rows every time it runs, as TLP needs."""
        r = self.rng.random()
        if depth > 0 and r < 0.3:
            return f"({self.plain_predicate(table, alias, depth - 1)} {self.pick(['AND', 'OR'])} {self.plain_predicate(table, alias, depth - 1)})"
        if depth > 0 and r < 0.4:
            return f"NOT ({self.plain_predicate(table, alias, depth - 1)})"
        kind = self.pick(["num", "int", "text", "text"])
        column = self.column(table, alias, kind)
        r = self.rng.random()
        literal = self.literal(kind) if kind != "text" else self.pick(["''", "'a'", "'u-1'", "'org-1'", "'auth'", "NULL", "'z'"])
        if r < 0.5:
            return f"{column} {self.pick(['=', '<>', '<', '<=', '>', '>='])} {literal}"
        if r < 0.65:
            return f"{column} IS {self.pick(['', 'NOT '])}NULL"
        if r < 0.8:
            return f"{column} IN ({', '.join(self.literal(kind) for _ in range(self.rng.randint(1, 5)))})"
        if kind == "text" and r < 0.9:
            return f"{column} LIKE {self.pick(['%1%', 'u-%', '_', '%'])!r}"
        return f"{column} = {self.column(table, alias, kind)}"

    def tlp(self, table):
        """(total, parts) statements of ternary logic partitioning over one predicate."""
        p = self.plain_predicate(table, "t", 2)
        base = f"SELECT count(*) FROM {table} t"
        return base, [f"{base} WHERE {p}", f"{base} WHERE NOT ({p})", f"{base} WHERE ({p}) IS NULL"]


class Fuzzer:
    def __init__(self, args):
        self.args = args
        self.report = clients.Report()
        self.lake = clients.Lake(args.lake)
        self.model = clients.Model(self.lake)
        self.schema = Schema(self.lake)
        self.idents = clients.choose_identities(self.lake)
        self.pg = clients.Pg(args.pg_port, args.secret)
        self.hidden = {i: clients.HiddenIds(self.model, i) for i in self.idents if i.role != "analyst"}
        self.allowed = {}
        self.conns = {}
        self.counts = {}
        self.saved = 0

    def conn(self, ident):
        c = self.conns.get(ident)
        if c is None or c.closed:
            c = self.conns[ident] = self.pg.connect(ident)
            c.execute(f"SET statement_timeout = {TIME_LIMIT_MS}")
        return c

    def derivable(self, ident, hidden_id):
        """Whether a string function over the caller's own ids can spell `hidden_id`:
        left('u-93', -1) is 'u-9', another user's id, read from the caller's own row."""
        allowed = self.allowed.get(ident)
        if allowed is None:
            allowed = self.allowed[ident] = self.model.allowed_ids(ident)
        return any(hidden_id in own for own in allowed)

    def server_alive(self):
        try:
            os.kill(self.args.pid, 0)
            return True
        except OSError:
            return False

    def save(self, sql, why):
        if not self.args.save:
            return
        os.makedirs(self.args.save, exist_ok=True)
        path = os.path.join(self.args.save, f"finding-{self.args.seed}-{self.saved}.sql")
        with open(path, "w") as f:
            f.write(f"-- {why}\n{sql}\n")
        self.saved += 1

    def run(self, ident, sql, params=None):
        """Runs one statement; returns (rows or None, sqlstate or None). Checks liveness, time and errors."""
        psycopg = clients._psycopg()
        started = time.monotonic()
        rows, state, message = None, None, ""
        try:
            with self.conn(ident).cursor() as cur:
                if params is None:
                    cur.execute(sql, prepare=False)
                else:
                    cur.execute(sql, params, prepare=True)
                rows = cur.fetchall() if cur.description is not None else []
        except psycopg.Error as e:
            state = getattr(e, "sqlstate", None)
            message = clients.pg_error_text(e)
            if state is None:
                # The connection broke without an error: the server died, or closed it without a word.
                if not self.server_alive():
                    self.report.fail("the server died", clients.short(sql))
                    self.save(sql, "the server died")
                    sys.exit(self.report.finish("fuzz_sql"))
                self.report.fail(f"{ident}: connection lost without an error", f"{clients.short(sql)}: {clients.one_line(e)}")
                self.save(sql, "connection lost without an error")
            self.conns.pop(ident, None)
        except (ValueError, OverflowError, UnicodeDecodeError) as e:
            # The rows do not decode as the types the server announced for them.
            self.report.fail(f"{ident}: an answer does not match its declared column types", f"{clients.short(sql)}: {clients.one_line(e)}")
            self.save(sql, f"undecodable answer: {e}")
            self.conns.pop(ident, None)
        elapsed = time.monotonic() - started
        if elapsed > TIME_LIMIT_MS / 1000 + GRACE_S:
            self.report.fail(f"{ident}: a statement ran {elapsed:.1f} s, past its {TIME_LIMIT_MS} ms limit", clients.short(sql))
            self.save(sql, f"ran {elapsed:.1f} s")
        if state == "XX000" and "a bug in Sluice" in message:
            self.report.note("a statement panicked (the server went on)", f"{clients.short(sql)}: {message}")
            self.save(sql, "panicked")
        if state == "XX000" and self.args.verbose:
            print(f"   XX000 {clients.short(message, 200)} <- {clients.short(sql, 200)}")
        key = state or "rows"
        self.counts[key] = self.counts.get(key, 0) + 1
        if ident in self.hidden:
            text = message + " " + " ".join(str(v) for row in (rows or [])[:5000] for v in row)
            # An id the statement itself spelled out is no leak when it comes back.
            asked = set(self.hidden[ident].find(sql + " " + repr(params)))
            leaked = [i for i in self.hidden[ident].find(text) if i not in asked and not self.derivable(ident, i)]
            if leaked:
                self.report.fail(f"{ident}: another user's id in an answer", f"{leaked[:5]} in {clients.short(sql)}")
                self.save(sql, f"{ident} saw {leaked[:5]}")
        return rows, state

    def tlp(self, gen):
        ident = gen.pick(self.idents)
        tables = [t for t in self.schema.tables if self.model.table_visible(ident, t)]
        if not tables:
            return
        table = gen.pick(tables)
        total_sql, parts = gen.tlp(table)
        total, state = self.run(ident, total_sql)
        if state is not None:
            return
        counts = []
        for sql in parts:
            rows, state = self.run(ident, sql)
            if state is not None:
                return  # an error in the predicate (a cast, say): no partition to compare
            counts.append(rows[0][0])
        if sum(counts) != total[0][0]:
            self.report.fail(f"{ident}: TLP: WHERE p, NOT p, p IS NULL count {counts}, the table {total[0][0]}", clients.short(parts[0]))
            self.save("\n".join([total_sql] + parts), "TLP")
        visible = self.model.visible(ident, table)
        if visible is not None and total[0][0] != len(visible):
            self.report.fail(f"{ident}: count(*) of {table} is {total[0][0]}, the model says {len(visible)}")

    def replay(self, directory):
        files = sorted(f for f in os.listdir(directory) if f.endswith(".sql")) if os.path.isdir(directory) else []
        for name in files:
            with open(os.path.join(directory, name)) as f:
                sql = "\n".join(line for line in f.read().splitlines() if not line.startswith("-- "))
            for ident in self.idents:
                self.run(ident, sql)
        self.report.ok(f"replayed {len(files)} regression statements as {len(self.idents)} identities")

    def fuzz(self):
        rng = random.Random(self.args.seed)
        gen = Generator(self.schema, rng)
        deadline = time.monotonic() + self.args.seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            if n % 10 == 0:
                self.tlp(gen)
                continue
            ident = gen.pick(self.idents)
            visible = [t for t in self.schema.tables if self.model.table_visible(ident, t)]
            gen.preferred = visible if visible and gen.chance(0.8) else []
            sql = gen.statement()
            params = None
            if gen.chance(0.2) and sql.startswith("SELECT") and "%" not in sql:
                # The extended protocol, with a parameter of a random type (psycopg's %s).
                sql = f"SELECT * FROM ({sql}) q WHERE %s IS NOT NULL"
                params = (gen.pick([1, "u-1", None, 3.5, "x" * 20000]),)
            self.run(ident, sql, params)
        alive = self.server_alive()
        self.report.check(alive, f"the server is alive after {n} statements")
        if alive:
            for ident in self.idents:
                try:
                    with self.pg.connect(ident) as c:
                        self.report.check(c.execute("SELECT 41 + 1").fetchone()[0] == 42, f"{ident}: a new connection answers")
                except Exception as e:  # noqa: BLE001
                    self.report.fail(f"{ident}: a new connection answers", clients.one_line(e))
        summary = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        print(f"fuzz_sql: seed {self.args.seed}, {n} statements in {self.args.seconds} s; outcomes: {summary}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", required=True)
    parser.add_argument("--pg-port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server's pid, to tell a crash from a closed connection")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--replay", help="a directory of *.sql statements to run first")
    parser.add_argument("--save", help="where statements that failed an oracle are written")
    parser.add_argument("--verbose", action="store_true", help="print every internal error (XX000) with its statement")
    args = parser.parse_args()
    fuzzer = Fuzzer(args)
    if args.replay:
        fuzzer.replay(args.replay)
    fuzzer.fuzz()
    sys.exit(fuzzer.report.finish("fuzz_sql"))


if __name__ == "__main__":
    main()
