-- Every valid learner interaction: chats, lab runs, content views, audio practice.
SELECT event_id, ts, user_id, org_id, session_id, service, kind, topic_id, latency_ms, helpful,
       _topic, _partition, _offset, _ingested_at
FROM interactions
