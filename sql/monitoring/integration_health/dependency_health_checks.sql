-- Each service's dependencies per minute: checks by status, latency, and the worst status seen.
SELECT tumble(interval '1 minute') AS window,
       service,
       dependency,
       count(*) AS checks,
       count(*) FILTER (WHERE status = 'healthy') AS healthy,
       count(*) FILTER (WHERE status = 'degraded') AS degraded,
       count(*) FILTER (WHERE status = 'unhealthy') AS unhealthy,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95_latency_ms,
       CASE WHEN count(*) FILTER (WHERE status = 'unhealthy') > 0 THEN 'unhealthy'
            WHEN count(*) FILTER (WHERE status = 'degraded') > 0 THEN 'degraded'
            ELSE 'healthy' END AS worst_status
FROM monitoring.health_checks
GROUP BY window, service, dependency
