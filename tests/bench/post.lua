-- SPDX-License-Identifier: Apache-2.0
-- wrk script: POST the body in the file named by the first script argument, and print one
-- machine-readable result line at the end (latencies in microseconds).
--   wrk ... -s post.lua URL -- body.json

local req

function init(args)
    local f = assert(io.open(args[1], "rb"))
    wrk.body = f:read("*a")
    f:close()
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["Authorization"] = "Bearer sk-bench"
    req = wrk.format()
end

function request()
    return req
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d status_errors=%d\n",
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
        e.connect + e.read + e.write + e.timeout + e.status, e.status))
end
