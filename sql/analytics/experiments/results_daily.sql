-- Experiment exposures and conversions per variant and day.
SELECT window,
       experiment_id,
       variant,
       exposed_users,
       converted_users,
       CASE WHEN exposed_users = 0 THEN NULL ELSE CAST(converted_users AS DOUBLE) / exposed_users END AS conversion_rate,
       value_sum
FROM (
    SELECT tumble(interval '1 day') AS window,
           experiment_id,
           variant,
           count(DISTINCT user_id) FILTER (WHERE outcome = 'exposed') AS exposed_users,
           count(DISTINCT user_id) FILTER (WHERE outcome = 'converted') AS converted_users,
           coalesce(sum(value) FILTER (WHERE outcome = 'converted'), 0.0) AS value_sum
    FROM experiments.exposures
    GROUP BY window, experiment_id, variant
)
