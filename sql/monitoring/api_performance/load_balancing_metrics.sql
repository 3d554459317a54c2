-- How each service's requests spread over its upstream instances, per minute.
SELECT window,
       service,
       upstream_instance,
       requests,
       CAST(requests AS DOUBLE) / sum(requests) OVER (PARTITION BY window, service) AS share,
       avg_duration_ms
FROM (
    SELECT tumble(interval '1 minute') AS window,
           service,
           upstream_instance,
           count(*) AS requests,
           avg(duration_ms) AS avg_duration_ms
    FROM gateway.requests
    GROUP BY window, service, upstream_instance
)
