-- SignalR per hub and hour: connections opened, users, messages and delivery latency.
SELECT tumble(interval '1 hour') AS window,
       hub,
       count(*) FILTER (WHERE action = 'open') AS opens,
       count(DISTINCT user_id) AS users,
       count(*) FILTER (WHERE action = 'message') AS messages,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY delivery_ms) AS p95_delivery_ms
FROM realtime.connections
WHERE transport = 'signalr'
GROUP BY window, hub
