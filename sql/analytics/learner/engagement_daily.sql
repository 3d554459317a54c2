-- How much each learner engaged each day, by kind of interaction.
SELECT tumble(interval '1 day') AS window,
       user_id,
       org_id,
       count(*) AS interactions,
       count(DISTINCT session_id) AS sessions,
       count(*) FILTER (WHERE kind = 'chat') AS chats,
       count(*) FILTER (WHERE kind = 'lab_run') AS lab_runs,
       count(*) FILTER (WHERE kind = 'content_view') AS content_views,
       count(*) FILTER (WHERE kind = 'audio_practice') AS audio_practice,
       avg(latency_ms) AS avg_latency_ms
FROM interactions
GROUP BY window, user_id, org_id
