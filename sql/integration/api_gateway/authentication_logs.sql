-- Requests the gateway did not authenticate: denied, expired or missing credentials.
SELECT request_id, correlation_id, ts, service, upstream_instance, method, route, status, duration_ms, user_id, org_id, auth_outcome, rate_limited, bytes_out,
       _topic, _partition, _offset, _ingested_at
FROM gateway.requests
WHERE auth_outcome <> 'ok'
