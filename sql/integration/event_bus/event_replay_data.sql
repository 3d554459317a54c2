-- Every replay of past events: who asked, for which events and time range, how many and how long.
SELECT replay_id, ts, requested_by, event_type, from_ts, to_ts, events_replayed, duration_ms, status,
       _topic, _partition, _offset, _ingested_at
FROM eventbus.replays
