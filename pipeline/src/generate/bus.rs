//! The event bus's own traffic: sagas (`eventbus.saga_steps`), the workflows across
//! services that the orchestrator runs step by step and undoes when a step fails, and
//! replays of past events (`eventbus.replays`), which a service asks for after an
//! outage to catch up on what it missed.

use rand::rngs::SmallRng;
use rand::Rng;

use super::dist::{chance, exponential, lognormal, pick, poisson};
use super::json::{Obj, Val};
use super::out::{Key, Out, Tix};
use super::traffic::{
    diurnal, Health, Svc, ASSESSMENT, AUTH, CONTENT_STUDIO, COURSE_BUILDER, DEVLAB, DIRECTORY, HEALTHY, LEARNER_AI,
    RAG_ASSISTANT, SERVICES, SKILLS_ENGINE,
};

/// Courses published (or republished) per user and day.
const COURSE_PUBLISH_PER_USER_DAY: f64 = 0.02;
/// Accounts deleted on request (GDPR erasure) per user and day.
const ACCOUNT_DELETION_PER_USER_DAY: f64 = 0.005;
/// A step fails this often when its service is healthy...
const STEP_FAIL: f64 = 0.02;
/// ...and this share of its service's failure rate when it is degraded.
const STEP_FAIL_DEGRADED: f64 = 0.5;
/// Share of failed sagas retried from the start, later than the session gap (5 min).
const P_RETRY: f64 = 0.35;
/// Share of degradation episodes after which the service replays what it missed.
const P_REPLAY_AFTER_EPISODE: f64 = 0.3;

/// One step of a saga: its name, the service that does it, its median duration.
type Step = (&'static str, Svc, f64);

/// The workflows the orchestrator runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Saga {
    /// A learner enrolled: a seat, prerequisites, access, a learning path, a welcome.
    Enrollment,
    /// An exam attempt was submitted.
    Grading,
    CoursePublish,
    AccountDeletion,
}

impl Saga {
    fn name(self) -> &'static str {
        match self {
            Saga::Enrollment => "enrollment",
            Saga::Grading => "grading",
            Saga::CoursePublish => "course_publish",
            Saga::AccountDeletion => "account_deletion",
        }
    }

    fn steps(self) -> &'static [Step] {
        match self {
            Saga::Enrollment => &[
                ("reserve_seat", COURSE_BUILDER, 120.0),
                ("check_prerequisites", SKILLS_ENGINE, 250.0),
                ("grant_access", AUTH, 60.0),
                ("create_learning_path", LEARNER_AI, 1_800.0),
                ("notify_learner", DIRECTORY, 300.0),
            ],
            Saga::Grading => &[
                ("score_attempt", ASSESSMENT, 600.0),
                ("update_skill_levels", SKILLS_ENGINE, 300.0),
                ("refresh_learning_path", LEARNER_AI, 2_200.0),
                ("record_result", COURSE_BUILDER, 150.0),
            ],
            Saga::CoursePublish => &[
                ("validate_course", COURSE_BUILDER, 400.0),
                ("render_content", CONTENT_STUDIO, 6_000.0),
                ("index_knowledge", RAG_ASSISTANT, 9_000.0),
                ("provision_labs", DEVLAB, 4_000.0),
                ("publish_catalog", COURSE_BUILDER, 200.0),
            ],
            Saga::AccountDeletion => &[
                ("revoke_tokens", AUTH, 80.0),
                ("erase_progress", COURSE_BUILDER, 900.0),
                ("erase_ai_history", LEARNER_AI, 1_500.0),
                ("erase_profile", DIRECTORY, 300.0),
            ],
        }
    }
}

/// Topics each service consumes from the bus, with about how many events each carries
/// per user and hour: what a replay after the service's outage re-reads.
const CONSUMES: [&[(&str, f64)]; 9] = [
    &[("cdc.auth.permissions", 0.002), ("cdc.directory.organizations", 0.0002)],
    &[("learning.progress", 0.26), ("assessment.completions", 0.045)],
    &[("cdc.course_builder.enrollments", 0.004), ("learning.progress", 0.26)],
    &[("assessment.completions", 0.045), ("learning.progress", 0.26)],
    &[("learning.progress", 0.26), ("interactions", 0.56), ("assessment.completions", 0.045)],
    &[("interactions", 0.56)],
    &[("cdc.course_builder.enrollments", 0.004), ("interactions", 0.56)],
    &[("cdc.content_studio.content_items", 0.003), ("interactions", 0.56)],
    &[("cdc.directory.users", 0.001)],
];

/// A replay planned from the services' outages, written when it finishes.
#[derive(Debug, Clone, Copy)]
struct Replay {
    at: i64,
    requested_by: Svc,
    event_type: &'static str,
    from: i64,
    to: i64,
    events: i64,
    duration_ms: f64,
    completed: bool,
}

pub(super) struct Bus {
    steps: Option<Tix>,
    replays: Option<Tix>,
    rng: SmallRng,
    users: u32,
    /// Replays still to write, latest first.
    planned: Vec<Replay>,
    /// Events at or after this time fall outside the generated period.
    end: i64,
}

impl Bus {
    pub(super) fn new(out: &Out, health: &Health, mut rng: SmallRng, users: u32, end: i64) -> Bus {
        let planned = plan_replays(&mut rng, health, users, end);
        Bus { steps: out.topic("eventbus.saga_steps"), replays: out.topic("eventbus.replays"), rng, users, planned, end }
    }

    /// The sagas started by scheduled and back-office work in the minute starting at
    /// `t0`, and the replays that finish in it.
    pub(super) fn minute(&mut self, out: &mut Out, health: &Health, t0: i64) {
        let rate = f64::from(self.users) / 1440.0 * diurnal(t0);
        for (saga, per_user_day) in
            [(Saga::CoursePublish, COURSE_PUBLISH_PER_USER_DAY), (Saga::AccountDeletion, ACCOUNT_DELETION_PER_USER_DAY)]
        {
            for _ in 0..poisson(&mut self.rng, per_user_day * rate) {
                let at = t0 + self.rng.random_range(0..60_000);
                self.saga(out, health, saga, at);
            }
        }
        while let Some(replay) = self.planned.pop_if(|r| r.at < t0 + 60_000) {
            self.replay(out, replay);
        }
    }

    /// A saga started at `t`; a failed one is sometimes retried, under the same id,
    /// long enough after that the retry is a run of its own.
    pub(super) fn saga(&mut self, out: &mut Out, health: &Health, saga: Saga, t: i64) {
        let (id, correlation) = (self.rng.random::<u128>(), self.rng.random::<u128>());
        let Some(failed_at) = self.run(out, health, saga, id, correlation, t) else { return };
        if chance(&mut self.rng, P_RETRY) {
            let later = (lognormal(&mut self.rng, 20.0 * 60_000.0, 0.7) as i64).clamp(6 * 60_000, 3 * 3_600_000);
            self.run(out, health, saga, id, correlation, failed_at + later);
        }
    }

    /// One run of a saga's steps from `t`: each step started, then completed or failed;
    /// after a failure the completed steps are compensated in reverse order. Returns
    /// the time of the run's last event if it failed.
    ///
    /// Steps follow each other within seconds (a queued one within minutes), so a run
    /// is one 5-minute session. Some events share a millisecond with the one before
    /// (the next step starts as the previous completes; a step with nothing to undo is
    /// compensated as the failure is recorded), never with their own step's start.
    fn run(&mut self, out: &mut Out, health: &Health, saga: Saga, id: u128, correlation: u128, t: i64) -> Option<i64> {
        let mut t = t;
        let mut event = |this: &mut Bus, at: i64, index: usize, status: &'static str, duration: Option<f64>| {
            this.step_event(out, at, saga, id, correlation, index, status, duration);
        };
        for (i, &(_, svc, median)) in saga.steps().iter().enumerate() {
            event(self, t, i, "started", None);
            let phase = health.at(svc, t);
            let degraded = if phase.fail > HEALTHY.fail { phase.fail * STEP_FAIL_DEGRADED } else { 0.0 };
            let rng = &mut self.rng;
            let failed = chance(rng, STEP_FAIL + degraded);
            let duration = lognormal(rng, median, 0.6).max(1.0);
            t += (duration.ceil() as i64).max(1);
            if failed {
                event(self, t, i, "failed", Some(duration));
                for j in (0..i).rev() {
                    let rng = &mut self.rng;
                    let undo = if j + 1 == i && chance(rng, 0.3) {
                        0.0
                    } else {
                        let undo = lognormal(rng, saga.steps()[j].2 * 0.5, 0.6).max(1.0);
                        t += lognormal(rng, 20.0, 0.5) as i64 + undo.ceil() as i64;
                        undo
                    };
                    event(self, t, j, "compensated", Some(undo));
                }
                return Some(t);
            }
            event(self, t, i, "completed", Some(duration));
            t += match self.rng.random::<f64>() {
                r if r < 0.25 => 0,
                r if r < 0.9 => lognormal(&mut self.rng, 40.0, 0.8) as i64,
                // Queued behind other work: seconds to a few minutes.
                _ => (exponential(&mut self.rng, 20_000.0) as i64).min(240_000),
            };
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn step_event(
        &mut self,
        out: &mut Out,
        at: i64,
        saga: Saga,
        id: u128,
        correlation: u128,
        index: usize,
        status: &'static str,
        duration: Option<f64>,
    ) {
        let Some(tix) = self.steps.filter(|_| at < self.end) else { return };
        let (step, svc, _) = saga.steps()[index];
        let (event_id, omit) = (self.rng.random::<u128>(), self.rng.random_bool(0.5));
        out.event(tix, at, Key::Uuid(id), |o: &mut Obj<'_>| {
            o.uuid("event_id", event_id);
            o.ts("ts");
            o.uuid("saga_id", id);
            o.str("saga_type", saga.name());
            o.str("step", step);
            o.int("step_index", index as i64);
            o.str("status", status);
            o.str("service", SERVICES[svc]);
            match duration {
                Some(ms) => o.f64("duration_ms", ms, 3),
                None => o.none("duration_ms", omit),
            }
            o.uuid("correlation_id", correlation);
        });
    }

    fn replay(&mut self, out: &mut Out, r: Replay) {
        let Some(tix) = self.replays.filter(|_| r.at < self.end) else { return };
        let id = self.rng.random::<u128>();
        out.event(tix, r.at, Key::Uuid(id), |o: &mut Obj<'_>| {
            o.uuid("replay_id", id);
            o.ts("ts");
            o.str("requested_by", SERVICES[r.requested_by]);
            o.str("event_type", r.event_type);
            o.val("from_ts", &Val::Ts(r.from));
            o.val("to_ts", &Val::Ts(r.to));
            o.int("events_replayed", r.events);
            o.f64("duration_ms", r.duration_ms, 3);
            o.str("status", if r.completed { "completed" } else { "failed" });
        });
    }
}

/// After some of a service's degradation episodes an operator replays one of the
/// topics it consumes over the episode (rounded out to whole minutes), a while after
/// it recovered. Replays are rare: a few a day on the whole platform.
fn plan_replays(rng: &mut SmallRng, health: &Health, users: u32, end: i64) -> Vec<Replay> {
    let mut planned = Vec::new();
    for (svc, topics) in CONSUMES.iter().enumerate() {
        for (start, stop) in health.episodes(svc) {
            if !chance(rng, P_REPLAY_AFTER_EPISODE) {
                continue;
            }
            let &(event_type, per_user_hour) = pick(rng, topics);
            let from = start - start.rem_euclid(60_000) - 60_000;
            let to = stop - stop.rem_euclid(60_000) + 60_000;
            let hours = (to - from) as f64 / 3_600_000.0;
            let expected = per_user_hour * f64::from(users) * hours * diurnal(from);
            let mut events = (expected * lognormal(rng, 1.0, 0.3)).round() as i64;
            let completed = !chance(rng, 0.1);
            if !completed {
                events = (events as f64 * rng.random::<f64>()) as i64;
            }
            // Reading the stream back costs a fixed setup plus a little per event.
            let duration_ms = lognormal(rng, 1_500.0, 0.4) + events as f64 * lognormal(rng, 0.8, 0.3);
            let requested = to + lognormal(rng, 20.0 * 60_000.0, 0.6) as i64;
            let at = requested + duration_ms.ceil() as i64;
            if at < end {
                planned.push(Replay { at, requested_by: svc, event_type, from, to, events, duration_ms, completed });
            }
        }
    }
    planned.sort_by_key(|r| std::cmp::Reverse(r.at));
    planned
}
