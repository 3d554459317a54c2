-- Every valid request through the API gateway, as it arrived.
SELECT request_id, correlation_id, ts, service, upstream_instance, method, route, status, duration_ms, user_id, org_id, auth_outcome, rate_limited, bytes_out,
       _topic, _partition, _offset, _ingested_at
FROM gateway.requests
