#!/usr/bin/env python3
"""Summarises a loadtest/bench.sh output directory as the Markdown tables of
BENCHMARKS.md: each figure beside its same-run baselines and the side that
limited it."""
import json
import os
import sys

out = sys.argv[1]
targets = ["presenced", "presenced-nolog", "null-udp", "raw-udp"]
names = {"presenced": "presenced", "presenced-nolog": "without the log",
         "null-udp": "do-nothing gnet", "raw-udp": "raw recvmmsg"}


def step(name, mode):
    p = os.path.join(out, f"udp-{name}-{mode}.json")
    if not os.path.exists(p):
        return None
    return json.load(open(p))["runs"][0]["steps"][0]


def short(limit):
    """The limit without its detail, for the table's cells."""
    out = []
    for part in (limit or "?").split(" + "):
        part = part.split(" (")[0]
        out.append({"generator CPU": "gen CPU", "server CPU": "srv CPU"}.get(part, part))
    return "+".join(out)


def cell(s, value, fmt):
    if s is None or value is None:
        return "-"
    return f"{fmt(value)} ({short(s.get('limit'))})"


def k(v):
    return f"{v/1000:.0f}k"


def us(v):
    return f"{v:.1f} us" if v else "-"


rows = [
    ("flat out, no ack: heartbeats/s taken in (server's count)", "flat-noack", lambda s: s["server"]["datagrams_per_s"], k),
    ("flat out, with ack: heartbeats/s answered (acks matched)", "flat-ack", lambda s: s["answered_per_s"], k),
    ("CPU per heartbeat at 20k/s, no ack", "20k-noack", lambda s: s["server"].get("cpu_us_per_heartbeat"), us),
    ("CPU per heartbeat at 20k/s, with ack", "20k-ack", lambda s: s["server"].get("cpu_us_per_heartbeat"), us),
]
print("### UDP, server pinned to one core (limit in brackets)\n")
print("| | " + " | ".join(names[t] for t in targets) + " | presenced / gnet | without log / gnet |")
print("|---|" + "---|" * (len(targets) + 2))
for label, mode, get, fmt in rows:
    vals, cells = {}, []
    for t in targets:
        s = step(t, mode)
        v = None
        if s is not None:
            try:
                v = get(s)
            except (KeyError, TypeError):
                v = None
        vals[t] = v
        cells.append(cell(s, v, fmt))
    def ratio(a, b):
        if not vals.get(a) or not vals.get(b):
            return "-"
        return f"{vals[a]/vals[b]:.2f}x"
    print(f"| {label} | " + " | ".join(cells) + f" | {ratio('presenced', 'null-udp')} | {ratio('presenced-nolog', 'null-udp')} |")

g = step("raw-udp", "flat-ack")
if g:
    us = g.get("loadgen_us_per_datagram") or 0
    print(f"\nGenerator on one core, flat out with acks against the raw recvmmsg target: sent {g['sent_per_s']/1000:.0f}k/s, "
          f"acks matched {g['answered_per_s']/1000:.0f}k/s, at {g['loadgen_cpu_pct']:.0f}% of its core: "
          f"{us:.2f} us of generator CPU per datagram, ack included = {1/us:.2f} M datagrams/s per whole core." if us else "")
print("\n### Generator (one core) per run: sent/s, its CPU, what it waited for a core (summed over its threads)\n")
print("| run | sent/s | answered/s | generator CPU | generator waited for a core | generator us/datagram | server CPU (waited) | server queue drops | limit |")
print("|---|---|---|---|---|---|---|---|---|")
for t in targets:
    for mode in ["flat-noack", "flat-ack", "20k-noack", "20k-ack"]:
        s = step(t, mode)
        if s is None:
            continue
        sv = s.get("server") or {}
        span = s.get("send_span_s") or 1
        print(f"| {t} {mode} | {s['sent_per_s']:.0f} | {s['answered_per_s']:.0f} | {s['loadgen_cpu_pct']:.0f}% | {s.get('loadgen_wait_pct', 0):.0f}% | {s.get('loadgen_us_per_datagram', 0):.2f} | "
              f"{100*sv.get('cpu_seconds', 0)/span:.0f}% ({100*sv.get('runqueue_wait_s', 0)/span:.0f}%) | {sv.get('server_queue_drops', 0)} | {s.get('limit')} |")

p = os.path.join(out, "http.txt")
if os.path.exists(p):
    print("\n### HTTP, wrk on one core (1 thread, 64 connections, distinct users)\n")
    res = {}
    for line in open(p):
        f = line.split()
        if not f or f[0] != "http":
            continue
        kv = dict(x.split("=", 1) for x in f[2:])
        res[(f[1], kv["batch"])] = kv
    print("| | presenced | without the log | do-nothing fasthttp | presenced / fasthttp | without log / fasthttp |")
    print("|---|---|---|---|---|---|")
    for b in ["1", "100"]:
        def hb(t):
            try:
                return float(res[(t, b)]["heartbeats/s"])
            except KeyError:
                return None
        def c(t):
            r = res.get((t, b))
            if not r:
                return "-"
            hbs = float(r["heartbeats/s"])
            cpu = float(r["server_cpu_s"])
            bad = f", {r['non2xx']} non-2xx" if r.get("non2xx", "0") != "0" else ""
            return f"{hbs/1000:.1f}k/s (p99 {r.get('p99', '?')}, server CPU {cpu:.1f} s{bad})"
        def ratio(a, bb):
            x, y = hb(a), hb(bb)
            return f"{x/y:.2f}x" if x and y else "-"
        print(f"| batch {b}: heartbeats/s | {c('presenced')} | {c('presenced-nolog')} | {c('null-http')} | {ratio('presenced', 'null-http')} | {ratio('presenced-nolog', 'null-http')} |")
    x, y = None, None
    try:
        x, y = float(res[("presenced", "100")]["heartbeats/s"]), float(res[("presenced", "1")]["heartbeats/s"])
        print(f"\npresenced batches of 100 / single: {x/y:.1f}x heartbeats/s")
    except KeyError:
        pass

p = os.path.join(out, "60s-steady.txt")
if os.path.exists(p):
    print("\n### 60 s interval\n")
    print(open(p).read().strip())

for name in sorted(os.listdir(out)):
    if not name.startswith("flood-") or not name.endswith(".json"):
        continue
    r = json.load(open(os.path.join(out, name)))
    c = r.get("flood_comparison")
    if not c:
        continue
    if name == sorted(x for x in os.listdir(out) if x.startswith("flood-") and x.endswith(".json"))[0]:
        print("\n### Flood (10,000 users at 5,000/s from 16 addresses; one source floods)\n")
        print("| flood | sent/s | replies/s | users' p99 without / with | ratio | offline without / with |")
        print("|---|---|---|---|---|---|")
    f = c.get("flood") or {}
    print(f"| {f.get('kind')} {f.get('offered_rate')} | {f.get('sent_per_s', 0):.0f} | {f.get('replies_per_s', 0):.0f} | "
          f"{c['p99_without_flood_ms']:.2f} / {c['p99_with_flood_ms']:.2f} ms | {c['p99_ratio']:.1f} | {c['offline_without_flood']} / {c['offline_with_flood']} |")
