-- Every call to the phonetic analysis API, as it arrived.
SELECT call_id, ts, provider, service, operation, duration_ms, status, success, error, model,
       prompt_tokens, completion_tokens, audio_seconds, cost_usd, user_id, org_id, correlation_id,
       _topic, _partition, _offset, _ingested_at
FROM integration.external_calls
WHERE provider = 'phonetic_analysis'
