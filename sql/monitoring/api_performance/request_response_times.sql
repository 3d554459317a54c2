-- Latency and errors per route and minute; a minute breaches the SLO when p95 > 100 ms.
-- The busiest table: in a group, every instance folds its share of the requests.
-- sluice: repartition
SELECT tumble(interval '1 minute') AS window,
       service,
       route,
       count(*) AS requests,
       count(*) FILTER (WHERE status BETWEEN 400 AND 499) AS errors_4xx,
       count(*) FILTER (WHERE status >= 500) AS errors_5xx,
       count(*) FILTER (WHERE rate_limited) AS rate_limited,
       avg(duration_ms) AS avg_duration_ms,
       max(duration_ms) AS max_duration_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) > 100 AS slo_breached
FROM gateway.requests
GROUP BY window, service, route
