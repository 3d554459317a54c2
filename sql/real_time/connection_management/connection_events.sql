-- Every real-time connection event: opens, messages, closes.
SELECT event_id, ts, connection_id, user_id, session_id, transport, action, setup_ms, delivery_ms, hub,
       _topic, _partition, _offset, _ingested_at
FROM realtime.connections
