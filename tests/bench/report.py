#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Turn the raw results of run.sh into markdown tables of medians.

    report.py RESULTS.tsv MEMORY.json ENV.txt

RESULTS.tsv lines: target scenario conns run requests duration_us p50_us p99_us errors
"""

import json
import statistics
import sys
from collections import defaultdict

TARGETS = [("direct", "mock direct"), ("nginx", "nginx"), ("switchyard", "Switchyard")]
SCENARIOS = [("chat", "non-streaming"), ("stream", "streaming (5 chunks)")]


def main(results_path, memory_path, env_path):
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
    print("\n".join(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
