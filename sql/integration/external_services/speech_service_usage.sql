-- Azure Speech per hour, service and operation: calls, failures, audio seconds and spend.
SELECT tumble(interval '1 hour') AS window,
       service,
       operation,
       count(*) AS calls,
       count(*) FILTER (WHERE NOT success) AS failures,
       sum(coalesce(audio_seconds, 0.0)) AS audio_seconds,
       sum(coalesce(cost_usd, 0.0)) AS cost_usd,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms
FROM integration.external_calls
WHERE provider = 'azure_speech'
GROUP BY window, service, operation
