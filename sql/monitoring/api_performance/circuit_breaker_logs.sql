-- Calls and failures per service and circuit-breaker state, per minute.
SELECT tumble(interval '1 minute') AS window,
       service,
       breaker_state,
       count(*) AS calls,
       count(*) FILTER (WHERE NOT success) AS failures
FROM integration.service_calls
GROUP BY window, service, breaker_state
