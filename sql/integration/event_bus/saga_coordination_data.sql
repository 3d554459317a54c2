-- One row per saga run: its steps less than 5 minutes apart. The outcome is the
-- status of its last step by time (between steps at the same instant, the later
-- step; within a step, the later message); duration_ms runs from its first step
-- to its last.
SELECT session(interval '5 minutes') AS window,
       saga_id,
       saga_type,
       count(*) AS steps,
       count(*) FILTER (WHERE status = 'failed') AS failed_steps,
       count(*) FILTER (WHERE status = 'compensated') AS compensated_steps,
       last_value(status ORDER BY ts, step_index) AS outcome,
       (CAST(max(ts) AS BIGINT) - CAST(min(ts) AS BIGINT)) / 1000.0 AS duration_ms
FROM eventbus.saga_steps
GROUP BY window, saga_id, saga_type
