-- Each organisation's members by role, from the directory's users mirror: a table
-- kept current (recomputed and replaced whenever the mirror changes), not windowed.
SELECT org_id,
       count(*) AS members,
       count(*) FILTER (WHERE role = 'learner') AS learners,
       count(*) FILTER (WHERE role = 'trainer') AS trainers,
       count(*) FILTER (WHERE role = 'org_admin') AS org_admins
FROM services.directory.users
GROUP BY org_id
