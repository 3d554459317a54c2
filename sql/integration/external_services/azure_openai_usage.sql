-- Azure OpenAI per hour, service, model and organisation: calls, failures, tokens and spend.
-- A call without a model or an organisation groups under null; missing counts add 0.
SELECT tumble(interval '1 hour') AS window,
       service,
       model,
       org_id,
       count(*) AS calls,
       count(*) FILTER (WHERE NOT success) AS failures,
       sum(coalesce(prompt_tokens, 0)) AS prompt_tokens,
       sum(coalesce(completion_tokens, 0)) AS completion_tokens,
       sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)) AS total_tokens,
       sum(coalesce(cost_usd, 0.0)) AS cost_usd,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms
FROM integration.external_calls
WHERE provider = 'azure_openai'
GROUP BY window, service, model, org_id
