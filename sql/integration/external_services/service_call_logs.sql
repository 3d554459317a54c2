-- Every valid call between services, with its circuit-breaker state.
SELECT call_id, ts, caller, service, operation, duration_ms, success, error, breaker_state, attempt, correlation_id,
       _topic, _partition, _offset, _ingested_at
FROM integration.service_calls
