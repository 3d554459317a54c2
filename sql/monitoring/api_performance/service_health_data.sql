-- Health of each service as its callers see it, per minute.
SELECT tumble(interval '1 minute') AS window,
       service,
       count(*) AS calls,
       count(*) FILTER (WHERE success) AS successes,
       count(*) FILTER (WHERE NOT success) AS failures,
       count(*) FILTER (WHERE success) * 100.0 / count(*) AS success_rate,
       avg(duration_ms) AS avg_duration_ms,
       count(*) FILTER (WHERE attempt > 1) AS retries,
       count(*) FILTER (WHERE breaker_state = 'OPEN') AS open_circuit_calls
FROM integration.service_calls
GROUP BY window, service
