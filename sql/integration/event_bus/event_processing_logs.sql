-- Domain events per type and minute, and how long they took to reach the pipeline.
SELECT tumble(interval '1 minute') AS window,
       event_type,
       count(*) AS events,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY ingest_lag_ms) AS p95_ingest_lag_ms
FROM (
    SELECT ts, 'learning.progress' AS event_type, (CAST(_ingested_at AS BIGINT) - CAST(ts AS BIGINT)) / 1000.0 AS ingest_lag_ms FROM learning.progress
    UNION ALL
    SELECT ts, 'assessment.completions', (CAST(_ingested_at AS BIGINT) - CAST(ts AS BIGINT)) / 1000.0 FROM assessment.completions
    UNION ALL
    SELECT ts, 'interactions', (CAST(_ingested_at AS BIGINT) - CAST(ts AS BIGINT)) / 1000.0 FROM interactions
    UNION ALL
    SELECT ts, 'experiments.exposures', (CAST(_ingested_at AS BIGINT) - CAST(ts AS BIGINT)) / 1000.0 FROM experiments.exposures
)
GROUP BY window, event_type
