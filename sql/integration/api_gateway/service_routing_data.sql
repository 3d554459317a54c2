-- Where the gateway routed each request: the service, its route and the upstream instance that answered.
SELECT request_id, ts, service, route, upstream_instance, status, duration_ms,
       _topic, _partition, _offset, _ingested_at
FROM gateway.requests
