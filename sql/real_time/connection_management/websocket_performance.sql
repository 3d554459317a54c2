-- Real-time connections per transport and minute: opens, closes, messages and their latencies.
SELECT tumble(interval '1 minute') AS window,
       transport,
       count(*) FILTER (WHERE action = 'open') AS opens,
       count(*) FILTER (WHERE action = 'close') AS closes,
       count(*) FILTER (WHERE action = 'message') AS messages,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY setup_ms) AS p95_setup_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY delivery_ms) AS p95_delivery_ms
FROM realtime.connections
GROUP BY window, transport
