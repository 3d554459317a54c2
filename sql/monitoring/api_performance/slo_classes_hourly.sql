-- Requests per service, hour and SLO class (the slo_class UDF in udfs/): how much
-- traffic met the 100 ms target, was degraded, or breached it.
SELECT tumble(interval '1 hour') AS window,
       service,
       slo_class(duration_ms) AS slo_class,
       count(*) AS requests
FROM gateway.requests
GROUP BY window, service, slo_class(duration_ms)
