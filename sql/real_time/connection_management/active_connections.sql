-- sluice: current state, removed when action = 'close'
-- The connections open now: one row per connection, from its first event until
-- its close (a later event starts it afresh).
SELECT connection_id,
       last_value(user_id ORDER BY ts) AS user_id,
       last_value(session_id ORDER BY ts) AS session_id,
       last_value(transport ORDER BY ts) AS transport,
       last_value(hub ORDER BY ts) FILTER (WHERE hub IS NOT NULL) AS hub,
       min(ts) FILTER (WHERE action = 'open') AS opened_at,
       max(ts) AS last_event_at,
       count(*) FILTER (WHERE action = 'message') AS messages
FROM realtime.connections
GROUP BY connection_id
