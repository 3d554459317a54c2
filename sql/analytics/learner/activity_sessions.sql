-- Each learner's sessions: runs of interactions less than 30 minutes apart. A
-- session's window starts at its first interaction and ends 30 minutes after its
-- last; it lands once the watermark passes that end.
SELECT session(interval '30 minutes') AS window,
       user_id,
       count(*) AS interactions,
       (CAST(max(ts) AS BIGINT) - CAST(min(ts) AS BIGINT)) / 60000000.0 AS active_minutes
FROM interactions
GROUP BY window, user_id
