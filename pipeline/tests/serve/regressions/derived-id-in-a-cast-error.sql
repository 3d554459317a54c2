-- fuzz_sql.py, seed 1796424511: learner u-93's cast error named 'u-9', spelled by left() from the learner's own id; the checker took it for another user's (no leak: the rows are sealed before any filter runs)
SELECT t."active_minutes", sqrt(1e-308) FROM analytics.learner.activity_sessions t WHERE t."active_minutes" IS NOT DISTINCT FROM left(t."user_id", -1)
