-- Server errors per service and hour, for the on-call dashboard. A request that
-- arrives late, up to an hour after its hour ended, corrects that hour's row in
-- place (the row is replaced, never duplicated); later ones go to late_events.
-- sluice: late events update windows for 1 hour
SELECT tumble(interval '1 hour') AS window,
       service,
       count(*) AS requests,
       count(*) FILTER (WHERE status >= 500) AS errors_5xx,
       count(*) FILTER (WHERE status >= 500) * 1.0 / count(*) AS error_rate
FROM gateway.requests
GROUP BY window, service
