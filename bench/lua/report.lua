-- wrk reporting hook shared by every configuration: after the run, print one line
--   BENCH_RESULT {json}
-- with the request count, errors, latency percentiles (microseconds) and, when the request
-- script keeps them, how many requests it issued and how many tokens it had.
-- wrk's own text report (with --latency) is printed as usual before it.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local function thread_sum(name)
  local total, seen = 0, false
  for _, t in ipairs(threads) do
    local v = t:get(name)
    if v ~= nil then
      total = total + v
      seen = true
    end
  end
  if seen then return total end
  return -1
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d},' ..
    '"issued":%d,"tokens":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9),
    thread_sum("issued"), thread_sum("ntokens")))
end
