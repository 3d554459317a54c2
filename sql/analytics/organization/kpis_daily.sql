-- An organisation's day: who was active (by the event's `org_id`), what they
-- completed and passed, and its learners' active enrollments as of the day's end
-- (enrollments mirror, with each enrollment's user placed by the users mirror).
WITH activity AS (
    SELECT tumble(interval '1 day') AS window,
           org_id,
           count(DISTINCT user_id) AS active_learners,
           count(*) FILTER (WHERE completed) AS topics_completed,
           count(*) FILTER (WHERE assessed) AS assessments,
           count(*) FILTER (WHERE passed) AS passes
    FROM (
        SELECT ts, org_id, user_id, completed, false AS assessed, false AS passed FROM learning.progress
        UNION ALL
        SELECT ts, org_id, user_id, false, true, passed FROM assessment.completions
        UNION ALL
        SELECT ts, org_id, user_id, false, false, false FROM interactions
    )
    GROUP BY window, org_id
),
enrolled AS (
    SELECT u.org_id, count(*) AS active_enrollments
    FROM services.course_builder.enrollments e
    JOIN services.directory.users u ON u.user_id = e.user_id
    WHERE e.status = 'active'
    GROUP BY u.org_id
)
SELECT a.window,
       a.org_id,
       a.active_learners,
       a.topics_completed,
       a.assessments,
       CASE WHEN a.assessments = 0 THEN NULL ELSE CAST(a.passes AS DOUBLE) / a.assessments END AS pass_rate,
       coalesce(n.active_enrollments, 0) AS active_enrollments
FROM activity a
LEFT JOIN enrolled n ON n.org_id = a.org_id
