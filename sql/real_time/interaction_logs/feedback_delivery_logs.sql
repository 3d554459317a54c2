-- Every status of every feedback delivery (sent, delivered, read, failed), as it arrived.
SELECT delivery_id, ts, kind, user_id, org_id, source_service, channel, status, latency_ms, error,
       _topic, _partition, _offset, _ingested_at
FROM realtime.deliveries
WHERE kind = 'feedback'
