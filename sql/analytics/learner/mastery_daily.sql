-- Each learner's assessment results per skill and day.
SELECT tumble(interval '1 day') AS window,
       user_id,
       skill_id,
       count(*) AS attempts,
       count(*) FILTER (WHERE passed) AS passes,
       max(score) AS best_score,
       avg(score) AS avg_score
FROM assessment.completions
GROUP BY window, user_id, skill_id
