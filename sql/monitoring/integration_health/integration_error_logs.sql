-- Every failed call, to another service or to an external provider, in one table.
-- `service` is who called, `target` what was called; `error` is the call's, or
-- `HTTP <status>` when it gave none.
SELECT 'service_call' AS source, call_id, ts, caller AS service, service AS target, operation, error, correlation_id,
       _topic, _partition, _offset, _ingested_at
FROM integration.service_calls
WHERE NOT success
UNION ALL
SELECT 'external_call' AS source, call_id, ts, service, provider AS target, operation,
       coalesce(error, 'HTTP ' || CAST(status AS VARCHAR)) AS error, correlation_id,
       _topic, _partition, _offset, _ingested_at
FROM integration.external_calls
WHERE NOT success
