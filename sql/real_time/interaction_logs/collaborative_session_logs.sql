-- Per collaborative session, runs of activity less than 30 minutes apart: who took
-- part, what they did, and for how long.
SELECT session(interval '30 minutes') AS window,
       collab_session_id,
       count(DISTINCT user_id) AS participants,
       count(*) FILTER (WHERE kind = 'edit') AS edits,
       count(*) FILTER (WHERE kind = 'chat') AS chats,
       count(*) FILTER (WHERE kind = 'audio') AS audio,
       (CAST(max(ts) AS BIGINT) - CAST(min(ts) AS BIGINT)) / 60000000.0 AS active_minutes
FROM realtime.collaboration
GROUP BY window, collab_session_id
