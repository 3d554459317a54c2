-- The pipeline's own throughput per source topic and minute of processing time
-- (sluice.metrics has one row per batch read; its ts is when the batch was read).
SELECT tumble(interval '1 minute') AS window,
       source_topic,
       sum(records) AS records,
       sum(bad_records) AS bad_records,
       sum(late_records) AS late_records,
       max(max_lag_ms) AS max_lag_ms
FROM sluice.metrics
GROUP BY window, source_topic
