-- A dashboard's latency line: p95 per service over the last 5 minutes, every minute
-- (a hop window: each event counts in the five windows it falls in).
-- sluice: repartition
SELECT hop(interval '1 minute', interval '5 minutes') AS window,
       service,
       count(*) AS requests,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms
FROM gateway.requests
GROUP BY window, service
