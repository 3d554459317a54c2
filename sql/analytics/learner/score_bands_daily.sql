-- Assessments per skill, day and score band (the score_band UDF in udfs/), for
-- trainers comparing skills.
SELECT tumble(interval '1 day') AS window,
       skill_id,
       score_band(score) AS band,
       count(*) AS assessments
FROM assessment.completions
GROUP BY window, skill_id, score_band(score)
