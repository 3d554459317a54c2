#!/usr/bin/env python3
"""A Postgres wire-protocol fuzzer for `sluice serve`.

It builds valid conversations (a startup, the password, simple and extended
queries, a cancel request, TLS and GSS requests) and mutates their bytes: bit
flips, inserted and deleted ranges, repeated and reordered messages, length
fields that lie (zero, negative, huge, off by one), oversized startup packets,
odd protocol versions, repeated SSLRequests, floods of garbage, and silence.
Each case gets its own connection. The oracles:

  * the server never dies (its pid stays alive);
  * a real client (psycopg, as an analyst) still connects and answers within a
    few seconds, checked every few cases, while the fuzzer's own connections come
    and go: nothing a client sends keeps another out;
  * a connection that has not logged in is closed within the login time (plus a
    grace), whatever it sent;
  * the server's resident memory stays within a bound of where it started.

  fuzz_wire.py --pg-port P --secret S --pid PID [--seconds 60] [--seed N]
               [--auth-timeout 1] [--max-growth-mib 256]

Exit 0 when every oracle held; 1 with each failure listed.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clients  # noqa: E402

PROTOCOL_3_0 = 196608
SSL_REQUEST, GSS_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102


def untyped(body):
    return struct.pack("!I", len(body) + 4) + body


def typed(kind, body):
    return kind + struct.pack("!I", len(body) + 4) + body


def cstr(text):
    return text.encode("utf-8", "surrogatepass") + b"\x00"


def startup(user, version=PROTOCOL_3_0, extra=()):
    params = [("user", user), ("database", "lake"), ("application_name", "fuzz_wire"), *extra]
    return untyped(struct.pack("!I", version) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\x00")


def password(token):
    return typed(b"p", cstr(token))


def query(sql):
    return typed(b"Q", cstr(sql))


def parse(name, sql, types=()):
    return typed(b"P", cstr(name) + cstr(sql) + struct.pack("!H", len(types)) + b"".join(struct.pack("!I", t) for t in types))


def bind(portal, statement, params):
    body = cstr(portal) + cstr(statement) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return typed(b"B", body + struct.pack("!H", 0))


def describe(kind, name):
    return typed(b"D", kind + cstr(name))


def execute(portal, rows=0):
    return typed(b"E", cstr(portal) + struct.pack("!I", rows))


SYNC, FLUSH, TERMINATE = typed(b"S", b""), typed(b"H", b""), typed(b"X", b"")


class Cases:
    """Valid conversations, as lists of messages, and their mutations."""

    def __init__(self, rng, user, token):
        self.rng, self.user, self.token = rng, user, token

    def conversations(self):
        u, t = self.user, self.token
        table = "monitoring.api_performance.request_response_times"
        return [
            [startup(u), password(t), query("SELECT 1"), TERMINATE],
            [startup(u), password(t), query(f"SELECT service, count(*) FROM {table} GROUP BY 1"), TERMINATE],
            [startup(u), password(t), parse("s1", "SELECT $1::text"), bind("", "s1", [b"hello"]), describe(b"P", ""), execute(""), SYNC, TERMINATE],
            [startup(u), password(t), parse("", f"SELECT * FROM {table} WHERE service = $1 LIMIT 5"), bind("", "", [b"auth"]), execute("", 2), SYNC],
            [startup(u), password(t), query("BEGIN; SELECT 1; COMMIT"), query("SHOW statement_timeout"), TERMINATE],
            [untyped(struct.pack("!I", SSL_REQUEST)), startup(u), password(t), query("SELECT 2")],
            [untyped(struct.pack("!I", GSS_REQUEST)), untyped(struct.pack("!I", SSL_REQUEST)), startup(u), password(t), query("SELECT 3")],
            [untyped(struct.pack("!III", CANCEL_REQUEST, 12345, 678))],
            [startup(u), password("not-a-token")],
            [startup(u)],
        ]

    def mutate(self, messages):
        rng = self.rng
        kind = rng.randrange(14)
        if kind == 0:  # flip bits
            data = bytearray(b"".join(messages))
            for _ in range(rng.randint(1, 8)):
                if data:
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            return bytes(data), "bit flips"
        if kind == 1:  # insert random bytes
            data = b"".join(messages)
            at = rng.randrange(len(data) + 1)
            return data[:at] + os.urandom(rng.randint(1, 64)) + data[at:], "inserted bytes"
        if kind == 2:  # delete a range
            data = b"".join(messages)
            a = rng.randrange(len(data) + 1)
            return data[:a] + data[a + rng.randint(1, 32):], "deleted range"
        if kind == 3:  # repeat a message
            i = rng.randrange(len(messages))
            return b"".join(messages[: i + 1] + [messages[i]] * rng.randint(2, 50) + messages[i + 1:]), "repeated message"
        if kind == 4:  # reorder
            shuffled = messages[:]
            rng.shuffle(shuffled)
            return b"".join(shuffled), "reordered"
        if kind == 5:  # a length that lies
            i = rng.randrange(len(messages))
            m = bytearray(messages[i])
            at = 1 if m[:1].isalpha() and len(m) > 5 else 0
            lie = rng.choice([0, 1, 3, 4, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, len(m) + 1, max(0, len(m) - 7), 10_001, 50 << 20])
            m[at:at + 4] = struct.pack("!I", lie & 0xFFFFFFFF)
            return b"".join(messages[:i] + [bytes(m)] + messages[i + 1:]), f"length {lie}"
        if kind == 6:  # an oversized startup packet
            return startup(self.user, extra=[("options", "x" * rng.choice([9000, 20000, 100000]))]), "oversized startup"
        if kind == 7:  # odd protocol versions
            version = rng.choice([0, 1, 0x00020000, 0x00030002, 0x0003FFFF, 0x12345678, SSL_REQUEST, CANCEL_REQUEST])
            return startup(self.user, version=version) + password(self.token) + query("SELECT 1"), f"protocol {version:#x}"
        if kind == 8:  # SSLRequest again and again
            return untyped(struct.pack("!I", SSL_REQUEST)) * rng.randint(2, 200), "repeated SSLRequest"
        if kind == 9:  # garbage
            return os.urandom(rng.choice([1, 7, 8, 100, 4096, 65536])), "garbage"
        if kind == 10:  # a huge typed frame after login, only its header
            return startup(self.user) + password(self.token) + b"Q" + struct.pack("!I", rng.choice([2 << 20, 500 << 20, 0x3FFFFFFF])) + b"SELECT ", "huge frame header"
        if kind == 11:  # a Bind claiming many parameters it does not carry
            body = cstr("") + cstr("s") + struct.pack("!H", 0) + struct.pack("!H", 65535)
            return startup(self.user) + password(self.token) + parse("s", "SELECT $1") + typed(b"B", body) + SYNC, "lying Bind"
        if kind == 12:  # silence: connect and send nothing
            return b"", "silence"
        return b"".join(messages[: rng.randint(1, len(messages))]), "truncated conversation"


class Fuzzer:
    def __init__(self, args):
        self.args = args
        self.report = clients.Report()
        self.rng = random.Random(args.seed)
        self.ident = clients.Identity("analyst", "fuzz-analyst", "analyst")
        self.token = clients.token_for(args.secret, self.ident)
        self.cases = Cases(self.rng, self.ident.sub, self.token)
        self.pg = clients.Pg(args.pg_port, args.secret)
        self.outcomes = {}

    def rss_mib(self):
        with open(f"/proc/{self.args.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def alive(self):
        try:
            os.kill(self.args.pid, 0)
            return True
        except OSError:
            return False

    def canary(self, after):
        started = time.monotonic()
        try:
            with self.pg.connect(self.ident, connect_timeout=5) as conn:
                answer = conn.execute("SELECT 41 + 1").fetchone()[0]
            took = time.monotonic() - started
            self.report.check(answer == 42 and took < 5, f"a real client connects and answers after {after}", f"{answer} in {took:.1f} s")
        except Exception as e:  # noqa: BLE001
            self.report.fail(f"a real client connects and answers after {after}", clients.one_line(e))

    def send(self, data, what, logged_in):
        """One connection: the bytes, in random pieces; then reads until it closes or the time is up."""
        # Not logged in: the server must close it within its login time. Logged in, it
        # may wait for the rest of a message: read its answers briefly and leave.
        deadline = self.args.auth_timeout + 3.0 if not logged_in else 0.7
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", self.args.pg_port), timeout=2) as sock:
                sock.settimeout(0.5)
                at = 0
                while at < len(data):
                    piece = self.rng.choice([1, 5, 64, 1500, 65536])
                    try:
                        sock.sendall(data[at:at + piece])
                    except OSError:
                        break
                    at += piece
                closed = False
                while time.monotonic() - started < deadline:
                    try:
                        chunk = sock.recv(65536)
                    except socket.timeout:
                        continue
                    except OSError:
                        closed = True
                        break
                    if not chunk:
                        closed = True
                        break
                outcome = "closed" if closed else "open"
        except OSError as e:
            outcome = f"refused ({e.__class__.__name__})"
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if outcome == "open" and not logged_in:
            self.report.fail(f"{what}: a connection that never logged in is open after {deadline:.0f} s")

    def run(self):
        baseline = self.rss_mib()
        finish = time.monotonic() + self.args.seconds
        n = 0
        conversations = self.cases.conversations()
        while time.monotonic() < finish:
            n += 1
            messages = self.rng.choice(conversations)
            if self.rng.random() < 0.15:
                data, what = b"".join(messages), "valid"
            else:
                data, what = self.cases.mutate(messages)
            # A conversation that logs in may stay open, waiting for more: that is allowed.
            logged_in = password(self.token) in data
            self.send(data, what, logged_in)
            if not self.alive():
                self.report.fail(f"the server died after case {n} ({what})", clients.short(data[:200]))
                break
            if n % 25 == 0:
                self.canary(f"{n} cases")
        if self.alive():
            self.canary("the run")
            growth = self.rss_mib() - baseline
            self.report.check(growth < self.args.max_growth_mib, f"resident memory grew {growth:.0f} MiB (bound {self.args.max_growth_mib})")
        summary = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        print(f"fuzz_wire: seed {self.args.seed}, {n} connections in {self.args.seconds} s: {summary}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--auth-timeout", type=float, default=5, help="the server's --auth-timeout, seconds")
    parser.add_argument("--max-growth-mib", type=float, default=256)
    args = parser.parse_args()
    fuzzer = Fuzzer(args)
    fuzzer.run()
    sys.exit(fuzzer.report.finish("fuzz_wire"))


if __name__ == "__main__":
    main()
