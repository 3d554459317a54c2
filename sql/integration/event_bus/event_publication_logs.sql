-- Every domain event published on the bus, with its original JSON.
SELECT event_id, 'learning.progress' AS event_type, ts, user_id, _raw AS payload, _topic, _partition, _offset, _ingested_at
FROM learning.progress
UNION ALL
SELECT event_id, 'assessment.completions' AS event_type, ts, user_id, _raw AS payload, _topic, _partition, _offset, _ingested_at
FROM assessment.completions
UNION ALL
SELECT event_id, 'interactions' AS event_type, ts, user_id, _raw AS payload, _topic, _partition, _offset, _ingested_at
FROM interactions
UNION ALL
SELECT event_id, 'experiments.exposures' AS event_type, ts, user_id, _raw AS payload, _topic, _partition, _offset, _ingested_at
FROM experiments.exposures
