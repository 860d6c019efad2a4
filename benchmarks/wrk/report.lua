-- Shared by every benchmark script: at the end of a run, report the figures the
-- runner needs as one line on stdout, "BENCH " followed by JSON.

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}}\n',
      summary.requests, summary.duration,
      math.floor(latency:percentile(50)), math.floor(latency:percentile(99)),
      e.connect, e.read, e.write, e.timeout, e.status))
end
