-- Per session, runs of real-time activity less than 30 minutes apart: its
-- connections, users, messages and delivery latency.
SELECT session(interval '30 minutes') AS window,
       session_id,
       count(DISTINCT connection_id) AS connections,
       count(DISTINCT user_id) AS users,
       count(*) FILTER (WHERE action = 'message') AS messages,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY delivery_ms) AS p95_delivery_ms
FROM realtime.connections
GROUP BY window, session_id
