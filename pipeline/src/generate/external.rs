//! Calls to providers outside the platform (`integration.external_calls`): Azure OpenAI
//! behind the RAG assistant's and the AI coach's answers, Azure Speech and the phonetic
//! analysis API behind audio practice, and third parties (payments, email, calendars,
//! LTI tools) called by scheduled jobs. Calls are priced per token or per second of
//! audio so that the usage tables add up to a plausible bill, and they fail the way
//! these providers do: throttling at peak hours, server errors, timeouts.

use rand::rngs::SmallRng;
use rand::Rng;

use super::dist::{chance, lognormal, pick, poisson, Weighted};
use super::json::Obj;
use super::out::{Key, Out, Tix};
use super::traffic::{
    diurnal, Caller, Svc, ASSESSMENT, AUTH, CONTENT_STUDIO, COURSE_BUILDER, DEVLAB, DIRECTORY, LEARNER_AI,
    RAG_ASSISTANT, SERVICES,
};
use super::world::World;

/// LLM jobs without a learner (content generation, batch recommendations, document
/// indexing) per user and day; they run round the clock.
const BACKGROUND_AI_PER_USER_DAY: f64 = 0.8;
/// Third-party calls of scheduled jobs (payments, emails, calendars, LTI) per user and day.
const THIRD_PARTY_PER_USER_DAY: f64 = 1.5;
/// Share of failed calls logged without an error text: only their status tells.
const P_NO_ERROR_TEXT: f64 = 0.3;

/// An Azure OpenAI deployment: its price in USD per million tokens and how fast it answers.
struct Model {
    name: &'static str,
    prompt_usd: f64,
    completion_usd: f64,
    /// Median time to the first token.
    base_ms: f64,
    /// Time per generated token.
    ms_per_token: f64,
}

const GPT_4O: Model = Model { name: "gpt-4o", prompt_usd: 2.50, completion_usd: 10.0, base_ms: 450.0, ms_per_token: 14.0 };
const GPT_4O_MINI: Model =
    Model { name: "gpt-4o-mini", prompt_usd: 0.15, completion_usd: 0.60, base_ms: 300.0, ms_per_token: 7.0 };
/// Embeddings generate nothing: no completion tokens.
const EMBEDDING: Model =
    Model { name: "text-embedding-3-small", prompt_usd: 0.02, completion_usd: 0.0, base_ms: 70.0, ms_per_token: 0.0 };

/// A way a call fails: its HTTP status, its error text and how long it took to fail
/// (a timeout waits for the client's limit).
#[derive(Debug, Clone, Copy)]
struct Failure {
    status: i64,
    error: &'static str,
    median_ms: f64,
}

const fn failure(status: i64, error: &'static str, median_ms: f64) -> Failure {
    Failure { status, error, median_ms }
}

/// A client-side time limit: the call ends at the limit, give or take the scheduler.
const TIMEOUT_30S: Failure = failure(503, "request timed out after 30000 ms", 30_000.0);
const OPENAI_THROTTLED: Failure = failure(429, "rate limit exceeded: retry after 10 seconds", 40.0);
const OPENAI_ERRORS: [Failure; 3] = [
    failure(500, "the server had an error while processing the request", 900.0),
    failure(503, "service unavailable", 120.0),
    TIMEOUT_30S,
];
const SPEECH_ERRORS: [Failure; 4] = [
    failure(429, "too many requests", 30.0),
    failure(400, "unsupported audio format", 60.0),
    failure(500, "internal server error", 400.0),
    failure(503, "service unavailable", 100.0),
];
const PHONETIC_ERRORS: [Failure; 3] = [
    failure(500, "phoneme model failed", 500.0),
    failure(502, "bad gateway", 80.0),
    failure(504, "analysis timed out after 10000 ms", 10_000.0),
];

/// A speech operation: its price per second of audio and its processing time.
struct Speech {
    operation: &'static str,
    usd_per_second: f64,
    base_ms: f64,
    /// Processing time per second of audio.
    ms_per_second: f64,
}

/// Speech to text and pronunciation assessment bill $1 an hour of audio; neural text to
/// speech $15 per million characters, about 15 characters a second.
const SPEECH_TO_TEXT: Speech =
    Speech { operation: "speech_to_text", usd_per_second: 1.0 / 3600.0, base_ms: 250.0, ms_per_second: 120.0 };
const PRONUNCIATION: Speech =
    Speech { operation: "pronunciation_assessment", usd_per_second: 1.0 / 3600.0, base_ms: 400.0, ms_per_second: 220.0 };
const TEXT_TO_SPEECH: Speech =
    Speech { operation: "text_to_speech", usd_per_second: 15.0 * 15.0 / 1e6, base_ms: 350.0, ms_per_second: 40.0 };
/// The phonetic analysis API bills $1.80 an hour of audio.
const PHONEMES: Speech =
    Speech { operation: "analyze_phonemes", usd_per_second: 1.8 / 3600.0, base_ms: 600.0, ms_per_second: 80.0 };

/// A third-party integration called by scheduled jobs.
struct ThirdParty {
    operation: &'static str,
    callers: &'static [Svc],
    /// Share of all third-party calls.
    weight: f64,
    median_ms: f64,
    /// Share of calls made for a user (the rest are for an organisation or nobody).
    for_user: f64,
    fail: f64,
    failures: &'static [Failure],
}

const THIRD_PARTIES: [ThirdParty; 5] = [
    ThirdParty {
        operation: "send_email",
        callers: &[DIRECTORY, COURSE_BUILDER, ASSESSMENT, AUTH],
        weight: 0.45,
        median_ms: 220.0,
        for_user: 0.8,
        fail: 0.02,
        failures: &[
            failure(429, "sending quota exceeded", 30.0),
            failure(400, "invalid recipient address", 50.0),
            failure(503, "mail service unavailable", 150.0),
        ],
    },
    ThirdParty {
        operation: "lti_launch",
        callers: &[COURSE_BUILDER, DEVLAB, CONTENT_STUDIO],
        weight: 0.25,
        median_ms: 400.0,
        for_user: 1.0,
        fail: 0.03,
        failures: &[
            failure(400, "invalid LTI signature", 60.0),
            failure(401, "tool consumer key rejected", 60.0),
            failure(500, "tool provider error", 700.0),
        ],
    },
    ThirdParty {
        operation: "sync_calendar",
        callers: &[COURSE_BUILDER],
        weight: 0.15,
        median_ms: 600.0,
        for_user: 0.6,
        fail: 0.04,
        failures: &[
            failure(401, "calendar token expired", 80.0),
            failure(503, "calendar service unavailable", 150.0),
            TIMEOUT_30S,
        ],
    },
    ThirdParty {
        operation: "charge",
        callers: &[COURSE_BUILDER, DIRECTORY],
        weight: 0.12,
        median_ms: 850.0,
        for_user: 1.0,
        fail: 0.05,
        failures: &[
            failure(402, "card declined", 700.0),
            failure(409, "duplicate charge", 300.0),
            failure(500, "payment processor error", 1_200.0),
        ],
    },
    ThirdParty {
        operation: "refund",
        callers: &[COURSE_BUILDER],
        weight: 0.03,
        median_ms: 900.0,
        for_user: 1.0,
        fail: 0.03,
        failures: &[failure(400, "charge already refunded", 300.0), failure(500, "payment processor error", 1_200.0)],
    },
];

/// Whom a call is for: a user (in their organisation), an organisation, or nobody.
#[derive(Debug, Clone, Copy)]
struct Owner {
    user: Option<u32>,
    org: Option<u32>,
}

impl From<Caller> for Owner {
    fn from(c: Caller) -> Owner {
        Owner { user: Some(c.user), org: Some(c.org) }
    }
}

/// One call as written; the provider-specific fields are `None` where they do not apply.
#[derive(Debug, Clone, Copy)]
struct Call {
    provider: &'static str,
    service: Svc,
    operation: &'static str,
    at: i64,
    duration_ms: f64,
    status: i64,
    error: Option<&'static str>,
    model: Option<&'static str>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    audio_seconds: Option<f64>,
    cost_usd: Option<f64>,
    user: Option<u32>,
    org: Option<u32>,
    correlation: u128,
}

impl Call {
    fn new(provider: &'static str, service: Svc, operation: &'static str, at: i64, correlation: u128) -> Call {
        Call {
            provider,
            service,
            operation,
            at,
            duration_ms: 0.0,
            status: 200,
            error: None,
            model: None,
            prompt_tokens: None,
            completion_tokens: None,
            audio_seconds: None,
            cost_usd: None,
            user: None,
            org: None,
            correlation,
        }
    }

    fn by(mut self, owner: Owner) -> Call {
        self.user = owner.user;
        self.org = owner.org;
        self
    }

    fn failed(&mut self, rng: &mut SmallRng, f: Failure) {
        self.status = f.status;
        self.error = Some(f.error).filter(|_| !chance(rng, P_NO_ERROR_TEXT));
        self.duration_ms = if f.median_ms >= 10_000.0 {
            f.median_ms + rng.random_range(0.0..250.0)
        } else {
            lognormal(rng, f.median_ms, 0.5)
        };
        self.cost_usd = None;
    }

    /// When the call returned.
    fn end(&self) -> i64 {
        self.at + self.duration_ms.ceil() as i64
    }
}

pub(super) struct External {
    calls: Option<Tix>,
    rng: SmallRng,
    /// Users at the start, which set the rates.
    users: u32,
    /// Each user's organisation, for calls made for a user.
    orgs: Vec<u32>,
    n_orgs: u32,
    third_party: Weighted,
    /// Calls at or after this time fall outside the generated period.
    end: i64,
}

impl External {
    pub(super) fn new(out: &Out, world: &World, rng: SmallRng, end: i64) -> External {
        External {
            calls: out.topic("integration.external_calls"),
            rng,
            users: world.users.len() as u32,
            orgs: world.users.iter().map(|u| u.org).collect(),
            n_orgs: world.orgs.len() as u32,
            third_party: Weighted::new(THIRD_PARTIES.iter().map(|p| p.weight)),
            end,
        }
    }

    /// The scheduled jobs of the minute starting at `t0`.
    pub(super) fn minute(&mut self, out: &mut Out, t0: i64) {
        let users = f64::from(self.users);
        for _ in 0..poisson(&mut self.rng, BACKGROUND_AI_PER_USER_DAY * users / 1440.0) {
            let at = t0 + self.rng.random_range(0..60_000);
            self.background_ai(out, at);
        }
        // Emails, launches and payments follow the users' day.
        for _ in 0..poisson(&mut self.rng, THIRD_PARTY_PER_USER_DAY * users / 1440.0 * diurnal(t0)) {
            let at = t0 + self.rng.random_range(0..60_000);
            self.third_party(out, at);
        }
    }

    /// A learner's chat: the RAG assistant embeds the question, retrieves passages and
    /// answers with them in a long prompt; the AI coach answers from a shorter one,
    /// mostly with the small model.
    pub(super) fn chat(&mut self, out: &mut Out, t: i64, who: Caller, svc: Svc) {
        let rng = &mut self.rng;
        let correlation = rng.random::<u128>();
        let mut at = t + rng.random_range(5..40);
        let (model, prompt, completion) = if svc == RAG_ASSISTANT {
            let tokens = lognormal(rng, 30.0, 0.5).ceil() as i64;
            let call = Call::new("azure_openai", svc, "embeddings", at, correlation).by(who.into());
            at = self.openai(out, call, &EMBEDDING, tokens, 0);
            let rng = &mut self.rng;
            at += lognormal(rng, 40.0, 0.5) as i64;
            let model = if chance(rng, 0.6) { &GPT_4O } else { &GPT_4O_MINI };
            (model, lognormal(rng, 2_400.0, 0.4), lognormal(rng, 320.0, 0.6))
        } else {
            let model = if chance(rng, 0.25) { &GPT_4O } else { &GPT_4O_MINI };
            (model, lognormal(rng, 900.0, 0.5), lognormal(rng, 250.0, 0.6))
        };
        let (prompt, completion) = (prompt.ceil() as i64, completion.ceil().min(4_096.0) as i64);
        let call = Call::new("azure_openai", svc, "chat_completions", at, correlation).by(who.into());
        self.openai(out, call, model, prompt, completion);
    }

    /// Audio practice. With the AI coach the learner's recording is transcribed or
    /// scored for pronunciation, and usually sent to phonetic analysis too; with the
    /// content studio the exercise's audio is synthesised when not cached, and now and
    /// then the recording analysed.
    pub(super) fn audio_practice(&mut self, out: &mut Out, t: i64, who: Caller, svc: Svc) {
        let rng = &mut self.rng;
        let correlation = rng.random::<u128>();
        let at = t + rng.random_range(5..40);
        let recording = lognormal(rng, 7.0, 0.5).clamp(1.0, 60.0);
        if svc == LEARNER_AI {
            let speech = if chance(rng, 0.6) { &PRONUNCIATION } else { &SPEECH_TO_TEXT };
            let phonemes = chance(rng, 0.7);
            let call = Call::new("azure_speech", svc, speech.operation, at, correlation).by(who.into());
            let end = self.audio(out, call, speech, recording);
            if phonemes {
                let call = Call::new("phonetic_analysis", svc, PHONEMES.operation, end + 5, correlation).by(who.into());
                self.audio(out, call, &PHONEMES, recording);
            }
        } else {
            let (synthesise, phonemes) = (chance(rng, 0.6), chance(rng, 0.4));
            let spoken = lognormal(rng, 5.0, 0.5).clamp(1.0, 40.0);
            if synthesise {
                let call = Call::new("azure_speech", svc, TEXT_TO_SPEECH.operation, at, correlation).by(who.into());
                self.audio(out, call, &TEXT_TO_SPEECH, spoken);
            }
            if phonemes {
                let call = Call::new("phonetic_analysis", svc, PHONEMES.operation, at + 2, correlation).by(who.into());
                self.audio(out, call, &PHONEMES, recording);
            }
        }
    }

    /// A call to Azure OpenAI (`call` says who calls, when and why), retried after the
    /// advertised delay when throttled; returns when the last attempt returned.
    fn openai(&mut self, out: &mut Out, call: Call, model: &Model, prompt: i64, completion: i64) -> i64 {
        let mut at = call.at;
        for attempt in 1..=3 {
            let rng = &mut self.rng;
            let mut call = Call { at, model: Some(model.name), ..call };
            // The deployment's tokens-per-minute quota is shared: throttling follows the load.
            let throttled = chance(rng, 0.009 * diurnal(at));
            let other = !throttled && chance(rng, 0.006);
            if throttled || other {
                let f = if throttled { OPENAI_THROTTLED } else { *pick(rng, &OPENAI_ERRORS) };
                call.failed(rng, f);
                let retry = throttled && attempt < 3 && chance(rng, 0.8);
                let end = call.end();
                self.emit(out, call);
                if !retry {
                    return end;
                }
                at = end + 10_000 + self.rng.random_range(0..500);
                continue;
            }
            call.prompt_tokens = Some(prompt);
            call.completion_tokens = (model.completion_usd > 0.0).then_some(completion);
            let completion = call.completion_tokens.unwrap_or(0);
            call.cost_usd =
                Some((prompt as f64 * model.prompt_usd + completion as f64 * model.completion_usd) / 1e6);
            call.duration_ms = lognormal(rng, model.base_ms, 0.4)
                + completion as f64 * model.ms_per_token * lognormal(rng, 1.0, 0.2)
                + prompt as f64 * 0.02;
            let end = call.end();
            self.emit(out, call);
            return end;
        }
        at
    }

    /// A call billed by the second of audio (Azure Speech, phonetic analysis); returns
    /// when it returned. A failed call still carries the audio it was sent, unbilled.
    fn audio(&mut self, out: &mut Out, call: Call, speech: &Speech, seconds: f64) -> i64 {
        let rng = &mut self.rng;
        let seconds = (seconds * 100.0).round() / 100.0;
        let mut call = Call { audio_seconds: Some(seconds), ..call };
        let (fail, failures) =
            if call.provider == "phonetic_analysis" { (0.02, &PHONETIC_ERRORS[..]) } else { (0.015, &SPEECH_ERRORS[..]) };
        if chance(rng, fail) {
            let f = *pick(rng, failures);
            call.failed(rng, f);
        } else {
            call.cost_usd = Some(seconds * speech.usd_per_second);
            call.duration_ms = lognormal(rng, speech.base_ms, 0.4) + seconds * speech.ms_per_second;
        }
        let end = call.end();
        self.emit(out, call);
        end
    }

    /// An LLM job with no learner behind it: AI-generated course content for an
    /// organisation, a nightly batch of recommendations, or the RAG index embedding new
    /// documents (for nobody in particular).
    fn background_ai(&mut self, out: &mut Out, at: i64) {
        let rng = &mut self.rng;
        let correlation = rng.random::<u128>();
        let org = rng.random_range(0..self.n_orgs.max(1));
        // Content is generated for an organisation; the index belongs to nobody.
        let (svc, operation, model, prompt, completion, org): (Svc, &str, &Model, f64, f64, _) = match rng.random::<f64>() {
            r if r < 0.4 => (CONTENT_STUDIO, "chat_completions", &GPT_4O, 1_500.0, 1_800.0, Some(org)),
            r if r < 0.7 => (LEARNER_AI, "chat_completions", &GPT_4O_MINI, 1_200.0, 400.0, Some(org)),
            _ => (RAG_ASSISTANT, "embeddings", &EMBEDDING, 6_000.0, 0.0, None),
        };
        let prompt = lognormal(rng, prompt, 0.6).ceil().min(100_000.0) as i64;
        let completion = lognormal(rng, completion.max(1.0), 0.5).ceil().min(4_096.0) as i64;
        let call = Call::new("azure_openai", svc, operation, at, correlation).by(Owner { user: None, org });
        self.openai(out, call, model, prompt, completion);
    }

    /// A third-party call of a scheduled job: an email, an LTI launch, a calendar sync,
    /// a payment.
    fn third_party(&mut self, out: &mut Out, at: i64) {
        let rng = &mut self.rng;
        let Some(i) = self.third_party.sample(rng) else { return };
        let def = &THIRD_PARTIES[i];
        let svc = *pick(rng, def.callers);
        let mut call = Call::new("third_party", svc, def.operation, at, rng.random::<u128>());
        if self.users > 0 && chance(rng, def.for_user) {
            // Any account, dormant ones too: they get emails and renewals.
            let user = rng.random_range(0..self.users);
            call = call.by(Owner { user: Some(user), org: Some(self.orgs[user as usize]) });
        }
        if chance(rng, def.fail) {
            let f = *pick(rng, def.failures);
            call.failed(rng, f);
        } else {
            call.duration_ms = lognormal(rng, def.median_ms, 0.5);
        }
        self.emit(out, call);
    }

    fn emit(&mut self, out: &mut Out, call: Call) {
        let Some(tix) = self.calls.filter(|_| call.at < self.end) else { return };
        let (call_id, omit) = (self.rng.random::<u128>(), self.rng.random_bool(0.5));
        let key = call.user.map_or(Key::None, |u| Key::Id("u-", u64::from(u) + 1));
        out.event(tix, call.at, key, |o: &mut Obj<'_>| {
            o.uuid("call_id", call_id);
            o.ts("ts");
            o.str("provider", call.provider);
            o.str("service", SERVICES[call.service]);
            o.str("operation", call.operation);
            o.f64("duration_ms", call.duration_ms, 3);
            o.int("status", call.status);
            o.bool("success", call.status < 400);
            match call.error {
                Some(e) => o.str("error", e),
                None => o.none("error", omit),
            }
            match call.model {
                Some(m) => o.str("model", m),
                None => o.none("model", omit),
            }
            match call.prompt_tokens {
                Some(n) => o.int("prompt_tokens", n),
                None => o.none("prompt_tokens", omit),
            }
            match call.completion_tokens {
                Some(n) => o.int("completion_tokens", n),
                None => o.none("completion_tokens", !omit),
            }
            match call.audio_seconds {
                Some(s) => o.f64("audio_seconds", s, 2),
                None => o.none("audio_seconds", omit),
            }
            match call.cost_usd {
                Some(c) => o.f64("cost_usd", c, 8),
                None => o.none("cost_usd", !omit),
            }
            match call.user {
                Some(u) => o.id("user_id", "u-", u64::from(u) + 1),
                None => o.none("user_id", omit),
            }
            match call.org {
                Some(g) => o.id("org_id", "org-", u64::from(g) + 1),
                None => o.none("org_id", !omit),
            }
            o.uuid("correlation_id", call.correlation);
        });
    }
}
