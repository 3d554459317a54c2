-- External providers per minute: calls, failures, the share that succeeded, and latency.
SELECT tumble(interval '1 minute') AS window,
       provider,
       count(*) AS calls,
       count(*) FILTER (WHERE NOT success) AS failures,
       count(*) FILTER (WHERE success) * 1.0 / count(*) AS availability,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms
FROM integration.external_calls
GROUP BY window, provider
