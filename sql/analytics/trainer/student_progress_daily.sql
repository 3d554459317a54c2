-- A trainer's view of their students' day: the students are the `student_id`s of
-- the trainer's teaching assignments as of the day's end (temporal join with the
-- teaching-assignments mirror). Trainers without an active student that day have
-- no row.
WITH activity AS (
    SELECT tumble(interval '1 day') AS window,
           user_id,
           count(*) FILTER (WHERE completed) AS topics_completed,
           sum(score) AS score_sum,
           count(score) AS scores
    FROM (
        SELECT ts, user_id, completed, CAST(NULL AS DOUBLE) AS score FROM learning.progress
        UNION ALL
        SELECT ts, user_id, false AS completed, score FROM assessment.completions
    )
    GROUP BY window, user_id
)
SELECT a.window,
       t.trainer_id,
       count(*) AS students_active,
       sum(a.topics_completed) AS topics_completed,
       CASE WHEN sum(a.scores) = 0 THEN NULL ELSE sum(a.score_sum) / sum(a.scores) END AS avg_score
FROM activity a
JOIN (SELECT DISTINCT trainer_id, student_id FROM services.directory.teaching_assignments) t
  ON t.student_id = a.user_id
GROUP BY a.window, t.trainer_id
