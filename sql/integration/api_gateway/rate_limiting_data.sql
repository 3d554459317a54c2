-- Requests and rate limiting per organisation and minute; anonymous requests group under a null org_id.
SELECT tumble(interval '1 minute') AS window,
       org_id,
       count(*) AS requests,
       count(*) FILTER (WHERE rate_limited) AS rate_limited,
       count(DISTINCT user_id) AS distinct_users
FROM gateway.requests
GROUP BY window, org_id
