-- Each learner's assessment results per skill and day.
SELECT tumble(interval '1 day') AS window,
       user_id,
       skill_id,
       count(*) AS attempts,
       count(*) FILTER (WHERE passed) AS passes,
       max(score) AS best_score,
       avg(score) AS avg_score,
       -- The mean of the best three scores (or of all, if fewer): a UDF in udfs/.
       mastery_score(score) AS mastery
FROM assessment.completions
GROUP BY window, user_id, skill_id
