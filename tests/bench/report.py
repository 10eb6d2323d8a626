#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Turn the raw results of run.sh into markdown tables of medians.

    report.py RESULTS.tsv MEMORY.json ENV.txt [GOV.tsv RING.tsv GOVERN.txt]

RESULTS.tsv lines: target scenario conns run requests duration_us p50_us p99_us errors
GOV.tsv lines:     label conns run requests duration_us p50_us p99_us errors
RING.tsv lines:    label run, then `cells used dropped popped` of the ring before and after the
                   wrk run, then the events the consumer popped (ring_drained only)
GOVERN.txt:        the output of bench_govern (`BENCH_GOV name=... ns=...` lines)
"""

import json
import os
import statistics
import sys
from collections import defaultdict

TARGETS = [("direct", "mock direct"), ("nginx", "nginx"), ("switchyard", "Switchyard")]
SCENARIOS = [("chat", "non-streaming"), ("stream", "streaming (5 chunks)")]


def read_wrk(path, key_fields):
    """wrk result lines of GOV.tsv: {key: [run, ...]} with req/s, p50, p99, errors."""
    runs = defaultdict(list)
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return runs
    for line in lines:
        parts = line.split()
        if len(parts) < key_fields + 6:
            continue
        key = tuple(int(p) if p.isdigit() else p for p in parts[:key_fields])
        req, dur, p50, p99, err = (int(x) for x in parts[key_fields + 1:key_fields + 6])
        runs[key].append({"rps": req / (dur / 1e6) if dur else 0.0, "p50": p50, "p99": p99,
                          "errors": err})
    return runs


def governance(gov_path, ring_path, govern_path):
    """The "Governance" section: issue 4's targets, then issue 6's ring."""
    runs = read_wrk(gov_path, 2)
    if not runs and not os.path.exists(govern_path or ""):
        return []

    def med(key, field):
        vals = [r[field] for r in runs.get(key, [])]
        return statistics.median(vals) if vals else None

    def verdict(ok):
        return "n/a" if ok is None else ("PASS" if ok else "MISS")

    out = ["", "Governance (issues 4 and 6)", "",
           "| measure | conns | req/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
    names = [("direct", 1, "backup directly (mock, no gateway)"),
             ("healthy", 1, "backup model `gpt-4o-mini` through Switchyard"),
             ("refused", 1, "`fb-refused`: primary refuses connections, falls back"),
             ("healthy", 64, "backup model `gpt-4o-mini` through Switchyard"),
             ("circuit", 64, "`fb-circuit`: primary's circuit open, falls back"),
             ("ring_drained", 64, "decision-log ring kept empty by a consumer"),
             ("ring_full", 64, "decision-log ring full, no consumer")]
    for label, c, desc in names:
        k = (label, c)
        if k not in runs:
            out.append(f"| {desc} | {c} | n/a | n/a | n/a | |")
            continue
        errs = sum(r["errors"] for r in runs[k])
        out.append(f"| {desc} | {c} | {med(k, 'rps'):,.0f} | {med(k, 'p50') / 1000:.3f} | "
                   f"{med(k, 'p99') / 1000:.3f} | {errs} |")

    bench = {}
    try:
        with open(govern_path) as f:
            for line in f:
                if line.startswith("BENCH_GOV "):
                    kv = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
                    bench[kv["name"]] = float(kv["ns"])
    except (OSError, KeyError, ValueError):
        pass

    out += ["", "| governance target | measured | target | result |", "|---|---:|---:|---|"]
    refused, healthy, direct = (med((n, 1), "p50") for n in ("refused", "healthy", "direct"))
    if refused is not None and healthy is not None:
        d = refused - healthy
        out.append(f"| added p50 of a fallback (primary refused) vs calling the backup model "
                   f"directly, 1 conn | {d:+.0f} µs | < 100 µs | {verdict(d < 100)} |")
    else:
        out.append("| added p50 of a fallback vs calling the backup model directly | n/a | "
                   "< 100 µs | n/a |")
    if refused is not None and direct is not None:
        out.append(f"| same, vs the backup upstream with no gateway at all (info) | "
                   f"{refused - direct:+.0f} µs | | |")
    circ, heal = med(("circuit", 64), "rps"), med(("healthy", 64), "rps")
    if circ and heal:
        out.append(f"| throughput with the primary's circuit open / healthy, 64 conns | "
                   f"{circ / heal:.3f} | ≥ 0.95 | {verdict(circ / heal >= 0.95)} |")
    else:
        out.append("| throughput with the primary's circuit open / healthy | n/a | ≥ 0.95 | n/a |")
    rows = [("happy_chat", "governance CPU per request, non-streaming (incl. the JSON check of "
             "the 200)", True),
            ("happy_stream", "governance CPU per request, streaming (no body check)", True),
            ("happy_stream_limits", "same, deployments with rpm/tpm/concurrency limits", True),
            ("happy_stream_least_connections", "same, `least_connections` balance", True),
            ("happy_stream_ring_full", "same, decision-log ring full", True),
            ("circuit_open_fallback", "fallback through an open circuit (pick refused, fallback "
             "event, then the backup's non-streaming path)", True),
            ("classify_200", "of which: `dp_classify` JSON check of a 200 body (info)", False),
            ("event_push", "of which: one decision-log event push (info)", False),
            ("event_push_ring_full", "one event push, ring full: dropped (info)", False)]
    for name, desc, target in rows:
        ns = bench.get(name)
        if ns is None:
            out.append(f"| {desc} | n/a | {'< 2 µs' if target else ''} | {'n/a' if target else ''} |")
            continue
        val = f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"
        out.append(f"| {desc} | {val} | {'< 2 µs' if target else ''} | "
                   f"{verdict(ns < 2000) if target else ''} |")
    dr, fu = med(("ring_drained", 64), "rps"), med(("ring_full", 64), "rps")
    if dr and fu:
        out.append(f"| throughput, ring full / ring kept empty, 64 conns (issue 6) | "
                   f"{fu / dr:.3f} | ≥ 0.95 | {verdict(fu / dr >= 0.95)} |")

    # Ring bookkeeping: did the drained runs drop nothing and the full runs drop everything?
    try:
        with open(ring_path) as f:
            ring = [line.split() for line in f if line.strip()]
    except OSError:
        ring = []
    drops = defaultdict(list)
    for r in ring:
        if len(r) >= 10:
            drops[r[0]].append(int(r[8]) - int(r[4]))
    if drops:
        out.append("")
        out.append("Events dropped during the ring runs (per run): "
                   + "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in sorted(drops.items()))
                   + ".")
    return out


def main(results_path, memory_path, env_path, gov_path=None, ring_path=None, govern_path=None):
    runs = defaultdict(list)
    with open(results_path) as f:
        for line in f:
            t, s, c, _run, req, dur, p50, p99, err = line.split()
            runs[(t, s, int(c))].append({
                "rps": int(req) / (int(dur) / 1e6) if int(dur) else 0.0,
                "p50": int(p50), "p99": int(p99), "errors": int(err)})

    def med(key, field):
        vals = [r[field] for r in runs.get(key, [])]
        return statistics.median(vals) if vals else None

    conns = sorted({k[2] for k in runs}) or [1, 64]
    out = []
    with open(env_path) as f:
        out.append(f.read().rstrip())
    if not runs and gov_path:  # BENCH_GOVERNANCE=only
        print("\n".join(out + governance(gov_path, ring_path, govern_path)))
        return
    out.append("")
    out.append("| workload | conns | target | req/s | p50 ms | p99 ms | errors |")
    out.append("|---|---:|---|---:|---:|---:|---:|")
    for s, sname in SCENARIOS:
        for c in conns:
            for t, tname in TARGETS:
                k = (t, s, c)
                if k not in runs:
                    out.append(f"| {sname} | {c} | {tname} | n/a | n/a | n/a | |")
                    continue
                errs = sum(r["errors"] for r in runs[k])
                out.append(f"| {sname} | {c} | {tname} | {med(k, 'rps'):,.0f} | "
                           f"{med(k, 'p50') / 1000:.3f} | {med(k, 'p99') / 1000:.3f} | {errs} |")

    out.append("")
    out.append("| workload | Switchyard/nginx req/s, 1 conn | Switchyard/nginx req/s, 64 conns "
               "| added p50, nginx (1 conn) | added p50, Switchyard (1 conn) |")
    out.append("|---|---:|---:|---:|---:|")

    def ratio(s, c):
        a, b = med(("switchyard", s, c), "rps"), med(("nginx", s, c), "rps")
        return f"{a / b:.2f}" if a and b else "n/a"

    def added(t, s):
        a, b = med((t, s, 1), "p50"), med(("direct", s, 1), "p50")
        return f"{a - b:+.0f} µs" if a is not None and b is not None else "n/a"

    for s, sname in SCENARIOS:
        out.append(f"| {sname} | {ratio(s, 1)} | {ratio(s, 64)} | {added('nginx', s)} | "
                   f"{added('switchyard', s)} |")

    out.append("")
    try:
        with open(memory_path) as f:
            m = json.load(f)
    except (OSError, ValueError):
        m = {}
    out.append("| memory (Switchyard, 1 worker) | value |")
    out.append("|---|---:|")

    def kb(v):
        return f"{v / 1024:.1f} MiB" if isinstance(v, (int, float)) else "n/a"

    out.append(f"| idle worker RSS after start | {kb(m.get('idle_rss_kb'))} |")
    out.append(f"| worker RSS before the streams | {kb(m.get('rss_before_kb'))} |")
    out.append(f"| worker RSS with {m.get('established', 'n/a')} of {m.get('streams', 1000)} "
               f"slow streams open | {kb(m.get('rss_during_kb'))} |")
    per = m.get("kb_per_stream")
    out.append(f"| memory per open stream | {f'{per:.1f} KB' if per is not None else 'n/a'} |")
    if gov_path:
        out += governance(gov_path, ring_path, govern_path)
    print("\n".join(out))


if __name__ == "__main__":
    main(*sys.argv[1:7])
