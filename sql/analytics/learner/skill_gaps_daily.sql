-- Where each learner's best assessment score of the day falls short of what their
-- organisation requires of the skill. The organisation comes from the users mirror
-- and the requirement from the required-skills mirror, both as of the day's end
-- (a temporal join: the window waits for those change feeds' watermarks too).
-- Several requirements of one organisation for one skill: the highest counts.
WITH best AS (
    SELECT tumble(interval '1 day') AS window,
           user_id,
           skill_id,
           max(score) AS best_score
    FROM assessment.completions
    GROUP BY window, user_id, skill_id
)
SELECT b.window,
       b.user_id,
       b.skill_id,
       max(r.required_level) AS required_level,
       coalesce(b.best_score, 0) AS best_score,
       max(r.required_level) - coalesce(b.best_score, 0) AS gap
FROM best b
JOIN services.directory.users u ON u.user_id = b.user_id
JOIN services.skills_engine.required_skills r ON r.org_id = u.org_id AND r.skill_id = b.skill_id
GROUP BY b.window, b.user_id, b.skill_id, b.best_score
HAVING max(r.required_level) - coalesce(b.best_score, 0) > 0
