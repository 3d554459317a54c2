-- fuzz_sql.py, seed 3: an integer plus a CASE with a float branch was declared bigint and sent as 2.0 (rows are now described after type coercion)
SELECT (t."attempts" + CASE WHEN t."best_score" >= cardinality(string_to_array('_', '-')) THEN t."passes" ELSE ln(-1e308) END) FROM analytics.learner.mastery_daily t WHERE t."best_score" >= signum(t."attempts")
