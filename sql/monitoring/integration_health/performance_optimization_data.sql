-- Where to optimise: per route and hour, the latency distribution, the share of
-- requests over the 100 ms SLO, and the bytes sent.
SELECT tumble(interval '1 hour') AS window,
       service,
       route,
       count(*) AS requests,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_duration_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99_duration_ms,
       count(*) FILTER (WHERE duration_ms > 100) * 1.0 / count(*) AS slow_share,
       sum(bytes_out) AS bytes_out
FROM gateway.requests
GROUP BY window, service, route
