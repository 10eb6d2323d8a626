#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Hold N slow streaming requests open through the gateway and report the worker's memory.

    slow_streams.py --port P --pids 123,124 --streams 1000 --body body.json

Opens the connections in batches, sends the request on each, waits for every response head
(up to --wait seconds), lets it settle, then reads VmRSS of --pids before and while the streams
are open; prints one JSON line and closes everything. Touches only 127.0.0.1.
"""

import argparse
import asyncio
import json
import resource
import sys
import time


def rss_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


async def open_stream(port, request, heads, results):
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        results["connect_errors"] += 1
        results.setdefault("first_error", repr(e))
        return None
    writer.write(request)
    try:
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), heads)
        status = int(head.split(b" ", 2)[1])
        results["status"][status] = results["status"].get(status, 0) + 1
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
        results["head_errors"] += 1
        results.setdefault("first_error", repr(e))
    return reader, writer


async def drain(reader):
    # Keep reading so the gateway never blocks on a full socket buffer.
    try:
        while await reader.read(65536):
            pass
    except (OSError, asyncio.CancelledError):
        pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pids", required=True, help="comma-separated worker PIDs")
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--body", required=True, help="file with the JSON request body")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--wait", type=float, default=40, help="seconds to wait for response heads")
    ap.add_argument("--settle", type=float, default=1.0)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, a.streams + 256)), hard))

    pids = [int(p) for p in a.pids.split(",") if p]
    body = open(a.body, "rb").read()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n"
               f"Content-Type: application/json\r\nAuthorization: Bearer sk-bench\r\n"
               f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    results = {"streams": a.streams, "status": {}, "connect_errors": 0, "head_errors": 0}
    results["rss_before_kb"] = rss_kb(pids)
    t0 = time.monotonic()
    conns = []
    for i in range(0, a.streams, a.batch):
        n = min(a.batch, a.streams - i)
        remaining = max(1.0, a.wait - (time.monotonic() - t0))
        conns += await asyncio.gather(*(open_stream(a.port, request, remaining, results)
                                        for _ in range(n)))
    conns = [c for c in conns if c]
    readers = [asyncio.create_task(drain(r)) for r, _ in conns]
    results["open_seconds"] = round(time.monotonic() - t0, 2)
    await asyncio.sleep(a.settle)
    results["established"] = results["status"].get(200, 0)
    results["rss_during_kb"] = rss_kb(pids)
    if results["established"]:
        results["kb_per_stream"] = round(
            (results["rss_during_kb"] - results["rss_before_kb"]) / results["established"], 1)
    for _, w in conns:
        w.close()
    for t in readers:
        t.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    results["status"] = {str(k): v for k, v in results["status"].items()}
    print(json.dumps(results))
    return 0 if results["established"] == a.streams else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
