//! Interaction and domain events. Users open sessions at a diurnal rate; each session
//! is a run of steps (browsing, interactions, progress, assessments) that make gateway
//! requests, the service calls behind them and the domain events. Services degrade now
//! and then, which shows as failing calls, a tripping circuit breaker and 5xx bursts.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use rand::rngs::SmallRng;
use rand::Rng;

use super::bus::{Bus, Saga};
use super::checks::Checks;
use super::dist::{beta, chance, exponential, lognormal, pick, poisson, Weighted};
use super::external::External;
use super::json::Obj;
use super::out::{Key, Out, Tix};
use super::realtime::{Realtime, HUBS};
use super::stream;
use super::world::{Role, World, EXPERIMENTS};

/// Sessions a user (dormant ones included) starts per day on average.
const SESSIONS_PER_USER_DAY: f64 = 3.6;
/// Gateway requests from anonymous visitors, per user and day (about 5 % of requests).
const ANONYMOUS_PER_USER_DAY: f64 = 9.0;
/// Service calls made by scheduled jobs rather than requests, per user and day.
const BACKGROUND_PER_USER_DAY: f64 = 4.0;
/// Degradation episodes per service and day.
const EPISODES_PER_DAY: f64 = 3.5;

/// Relative traffic at a time of day: about 10 % of the peak at 03:00 UTC, peak at 15:00.
/// Normalised to a daily mean of 1.
pub(super) fn diurnal(ms: i64) -> f64 {
    let hour = ms.rem_euclid(86_400_000) as f64 / 3_600_000.0;
    let wave = (1.0 + (std::f64::consts::TAU * (hour - 15.0) / 24.0).cos()) / 2.0;
    (0.1 + 0.9 * wave * wave) / (0.1 + 0.9 * 0.375)
}

pub(super) const SERVICES: [&str; 9] = [
    "directory",
    "course_builder",
    "assessment",
    "skills_engine",
    "learner_ai",
    "content_studio",
    "devlab",
    "rag_assistant",
    "auth",
];
/// A service, as an index into [`SERVICES`].
pub(super) type Svc = usize;
pub(super) const DIRECTORY: Svc = 0;
pub(super) const COURSE_BUILDER: Svc = 1;
pub(super) const ASSESSMENT: Svc = 2;
pub(super) const SKILLS_ENGINE: Svc = 3;
pub(super) const LEARNER_AI: Svc = 4;
pub(super) const CONTENT_STUDIO: Svc = 5;
pub(super) const DEVLAB: Svc = 6;
pub(super) const RAG_ASSISTANT: Svc = 7;
pub(super) const AUTH: Svc = 8;

/// An API route: a path template and the status it answers when all goes well.
#[derive(Debug)]
struct Route {
    method: &'static str,
    path: &'static str,
    ok: i64,
    /// Served without a token.
    public: bool,
}

const fn get(path: &'static str) -> Route {
    Route { method: "GET", path, ok: 200, public: false }
}
const fn call(method: &'static str, path: &'static str, ok: i64) -> Route {
    Route { method, path, ok, public: false }
}
const fn public(method: &'static str, path: &'static str) -> Route {
    Route { method, path, ok: 200, public: true }
}

const LOGIN: Route = public("POST", "/api/v1/auth/token");
const REFRESH: Route = call("POST", "/api/v1/auth/refresh", 200);
const LOGOUT: Route = call("POST", "/api/v1/auth/logout", 204);
const CATALOG: Route = public("GET", "/api/v1/courses");
const COURSE: Route = public("GET", "/api/v1/courses/{id}");
const SKILLS: Route = public("GET", "/api/v1/skills");
const USER: Route = get("/api/v1/users/{id}");
const PATH: Route = get("/api/v1/learning-paths/{id}");
const PROGRESS: Route = call("POST", "/api/v1/progress", 201);
const TOPIC: Route = get("/api/v1/courses/{id}/topics/{topicId}");
const START_ATTEMPT: Route = call("POST", "/api/v1/exams/{id}/attempts", 201);
const ANSWERS: Route = call("PUT", "/api/v1/attempts/{id}/answers", 200);
const SUBMIT: Route = call("POST", "/api/v1/attempts/{id}/submit", 200);
const CHAT: Route = call("POST", "/api/v1/chat/completions", 200);
const COACH: Route = call("POST", "/api/v1/coach/messages", 200);
const AUDIO_EVAL: Route = call("POST", "/api/v1/audio/evaluate", 200);
const AUDIO_CONTENT: Route = get("/api/v1/content/{id}/audio");
const CONTENT: Route = get("/api/v1/content/{id}");
const ASSET: Route = get("/api/v1/content/{id}/assets/{assetId}");
const LAB_RUN: Route = call("POST", "/api/v1/labs/{id}/runs", 201);
const RUN_STATUS: Route = get("/api/v1/runs/{id}/status");

/// How a service behaves: latency, instances, routes by popularity, whom it calls.
struct Profile {
    median_ms: f64,
    sigma: f64,
    /// Share of requests per instance (`<service>-1`, `-2`, ...).
    instances: &'static [f64],
    routes: &'static [Route],
    /// Mean downstream calls per request.
    fanout: f64,
    deps: &'static [Svc],
    /// Operations other services call on this one.
    ops: &'static [&'static str],
    bytes_median: f64,
}

static PROFILES: [Profile; 9] = [
    Profile {
        median_ms: 14.0,
        sigma: 0.9,
        instances: &[0.5, 0.3, 0.2],
        routes: &[
            USER,
            get("/api/v1/users/{id}/profile"),
            get("/api/v1/organizations/{id}"),
            get("/api/v1/organizations/{id}/members"),
            get("/api/v1/teaching-assignments"),
            call("PATCH", "/api/v1/users/{id}", 200),
            get("/api/v1/users/{id}/preferences"),
            call("PUT", "/api/v1/users/{id}/preferences", 204),
        ],
        fanout: 0.17,
        deps: &[AUTH],
        ops: &["GetUser", "GetOrganization", "ListTeachingAssignments", "ResolveRoles"],
        bytes_median: 1_800.0,
    },
    Profile {
        median_ms: 26.6,
        sigma: 0.95,
        instances: &[0.4, 0.35, 0.25],
        routes: &[
            COURSE,
            get("/api/v1/courses/{id}/topics"),
            CATALOG,
            TOPIC,
            get("/api/v1/enrollments"),
            PROGRESS,
            call("POST", "/api/v1/enrollments", 201),
            call("DELETE", "/api/v1/enrollments/{id}", 204),
        ],
        fanout: 0.32,
        deps: &[DIRECTORY, CONTENT_STUDIO, SKILLS_ENGINE],
        ops: &["GetCourse", "ListTopics", "GetEnrollment", "RecordProgress"],
        bytes_median: 6_000.0,
    },
    Profile {
        median_ms: 31.5,
        sigma: 1.0,
        instances: &[0.6, 0.4],
        routes: &[
            get("/api/v1/exams/{id}"),
            get("/api/v1/attempts/{id}/result"),
            START_ATTEMPT,
            ANSWERS,
            SUBMIT,
            get("/api/v1/exams"),
        ],
        fanout: 0.49,
        deps: &[SKILLS_ENGINE, COURSE_BUILDER, DIRECTORY],
        ops: &["GetExam", "ScoreAttempt"],
        bytes_median: 4_000.0,
    },
    Profile {
        median_ms: 21.0,
        sigma: 0.9,
        instances: &[0.55, 0.45],
        routes: &[
            get("/api/v1/users/{id}/skills"),
            get("/api/v1/skills/{id}"),
            SKILLS,
            get("/api/v1/organizations/{id}/skill-gaps"),
            call("POST", "/api/v1/skills/assessments", 201),
        ],
        fanout: 0.21,
        deps: &[DIRECTORY, COURSE_BUILDER],
        ops: &["GetSkillProfile", "UpdateSkillLevel", "ListRequiredSkills"],
        bytes_median: 2_500.0,
    },
    Profile {
        median_ms: 45.5,
        sigma: 0.9,
        instances: &[0.35, 0.3, 0.2, 0.15],
        routes: &[PATH, call("POST", "/api/v1/recommendations", 200), COACH, AUDIO_EVAL, get("/api/v1/users/{id}/insights")],
        fanout: 0.63,
        deps: &[SKILLS_ENGINE, COURSE_BUILDER, RAG_ASSISTANT, CONTENT_STUDIO],
        ops: &["GetLearningPath", "Recommend", "ScorePronunciation"],
        bytes_median: 3_000.0,
    },
    Profile {
        median_ms: 29.4,
        sigma: 1.0,
        instances: &[0.5, 0.3, 0.2],
        routes: &[
            CONTENT,
            ASSET,
            AUDIO_CONTENT,
            get("/api/v1/content"),
            call("POST", "/api/v1/content", 201),
            call("PUT", "/api/v1/content/{id}", 200),
        ],
        fanout: 0.24,
        deps: &[COURSE_BUILDER, RAG_ASSISTANT],
        ops: &["GetContent", "ListAssets", "GenerateContent"],
        bytes_median: 14_000.0,
    },
    Profile {
        median_ms: 42.0,
        sigma: 0.95,
        instances: &[0.7, 0.3],
        routes: &[get("/api/v1/labs/{id}"), RUN_STATUS, LAB_RUN, get("/api/v1/labs"), call("DELETE", "/api/v1/sandboxes/{id}", 204)],
        fanout: 0.42,
        deps: &[DIRECTORY, CONTENT_STUDIO],
        ops: &["StartSandbox", "RunTests"],
        bytes_median: 2_000.0,
    },
    Profile {
        median_ms: 59.5,
        sigma: 0.85,
        instances: &[0.45, 0.35, 0.2],
        routes: &[CHAT, get("/api/v1/chat/sessions/{id}"), call("POST", "/api/v1/feedback", 204), get("/api/v1/sources/{id}")],
        fanout: 0.77,
        deps: &[CONTENT_STUDIO, LEARNER_AI],
        ops: &["RetrieveDocuments", "Answer"],
        bytes_median: 5_000.0,
    },
    Profile {
        median_ms: 8.4,
        sigma: 0.8,
        instances: &[0.5, 0.5],
        routes: &[REFRESH, get("/api/v1/auth/me"), LOGIN, LOGOUT],
        fanout: 0.1,
        deps: &[DIRECTORY],
        ops: &["ValidateToken", "IntrospectToken", "GetPermissions"],
        bytes_median: 900.0,
    },
];

/// The services a service calls: what its health checks probe besides its infrastructure.
pub(super) fn dependencies(svc: Svc) -> &'static [Svc] {
    PROFILES[svc].deps
}

/// Where a learner's browsing goes, by service.
const BROWSE_MIX: [f64; 9] = [0.10, 0.35, 0.08, 0.10, 0.12, 0.15, 0.04, 0.04, 0.02];
/// Trainers and admins look at people and skills more.
const STAFF_BROWSE_MIX: [f64; 9] = [0.35, 0.25, 0.08, 0.2, 0.05, 0.05, 0.01, 0.01, 0.0];
/// Callers of scheduled jobs.
const BACKGROUND_CALLERS: [Svc; 5] = [LEARNER_AI, SKILLS_ENGINE, COURSE_BUILDER, CONTENT_STUDIO, ASSESSMENT];

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Breaker {
    Closed,
    Open,
    HalfOpen,
}

impl Breaker {
    fn name(self) -> &'static str {
        match self {
            Breaker::Closed => "CLOSED",
            Breaker::Open => "OPEN",
            Breaker::HalfOpen => "HALF_OPEN",
        }
    }
}

/// A stretch of a service's health: its callers' breaker state and how often it fails.
#[derive(Debug, Clone, Copy)]
pub(super) struct Phase {
    pub start: i64,
    pub end: i64,
    pub breaker: Breaker,
    pub fail: f64,
}

pub(super) const HEALTHY: Phase = Phase { start: i64::MIN, end: i64::MAX, breaker: Breaker::Closed, fail: 0.003 };

/// Degradation episodes per service, drawn up front: a failing spell with the breaker
/// closed, then OPEN / HALF_OPEN cycles until a probe succeeds and it closes again.
pub(super) struct Health {
    phases: Vec<Vec<Phase>>,
}

impl Health {
    fn build(rng: &mut SmallRng, start: i64, end: i64) -> Health {
        let days = (end - start) as f64 / 86_400_000.0;
        let phases = SERVICES
            .iter()
            .map(|_| {
                let mut starts: Vec<i64> =
                    (0..poisson(rng, EPISODES_PER_DAY * days)).map(|_| rng.random_range(start..end.max(start + 1))).collect();
                starts.sort_unstable();
                let mut phases: Vec<Phase> = Vec::new();
                for s in starts {
                    if phases.last().is_some_and(|p| p.end > s) {
                        continue;
                    }
                    let mut t = s;
                    let mut push = |len: i64, breaker, fail| {
                        phases.push(Phase { start: t, end: t + len, breaker, fail });
                        t += len;
                    };
                    push(rng.random_range(30_000..150_000), Breaker::Closed, 0.55);
                    let cycles = rng.random_range(1..=3);
                    for c in 1..=cycles {
                        push(rng.random_range(20_000..90_000), Breaker::Open, 1.0);
                        push(rng.random_range(5_000..20_000), Breaker::HalfOpen, if c == cycles { 0.1 } else { 0.7 });
                    }
                }
                phases
            })
            .collect();
        Health { phases }
    }

    pub(super) fn at(&self, svc: Svc, t: i64) -> Phase {
        let phases = &self.phases[svc];
        let i = phases.partition_point(|p| p.start <= t);
        match i.checked_sub(1).map(|i| phases[i]) {
            Some(p) if t < p.end => p,
            _ => HEALTHY,
        }
    }

    /// A service's degradation episodes as `(start, end)`: runs of adjoining phases.
    pub(super) fn episodes(&self, svc: Svc) -> Vec<(i64, i64)> {
        let mut episodes: Vec<(i64, i64)> = Vec::new();
        for p in &self.phases[svc] {
            match episodes.last_mut() {
                Some(last) if last.1 == p.start => last.1 = p.end,
                _ => episodes.push((p.start, p.end)),
            }
        }
        episodes
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Trigger {
    Start,
    Browse,
    Chat,
    Progress,
    Assess,
}

/// An A/B test: where users meet it and how often each variant converts.
struct Experiment {
    trigger: Trigger,
    conversion: [f64; 2],
    value_median: f64,
}

const EXPERIMENT_DEFS: [Experiment; EXPERIMENTS] = [
    Experiment { trigger: Trigger::Browse, conversion: [0.12, 0.16], value_median: 29.0 },
    Experiment { trigger: Trigger::Chat, conversion: [0.14, 0.19], value_median: 12.0 },
    Experiment { trigger: Trigger::Progress, conversion: [0.15, 0.18], value_median: 45.0 },
    Experiment { trigger: Trigger::Start, conversion: [0.10, 0.15], value_median: 19.0 },
    Experiment { trigger: Trigger::Assess, conversion: [0.18, 0.22], value_median: 60.0 },
];
const VARIANTS: [&str; 2] = ["control", "treatment"];
/// Bits of a user's state in one experiment.
const EXPOSURES: u8 = 0b0111;
const WILL_CONVERT: u8 = 0b1000;
const CONVERTED: u8 = 0b1_0000;

/// Event topics by role; a topic missing from the registry is not generated.
struct Topics {
    gateway: Option<Tix>,
    calls: Option<Tix>,
    progress: Option<Tix>,
    assessments: Option<Tix>,
    interactions: Option<Tix>,
    exposures: Option<Tix>,
    connections: Option<Tix>,
}

#[derive(Debug, Clone, Copy)]
struct Session {
    user: u32,
    id: u64,
    connection: u64,
    signalr: bool,
    /// The SignalR hub of the connection (an index into `realtime::HUBS`), if `signalr`.
    hub: usize,
    steps_left: u32,
    enrollment: Option<u32>,
    started: bool,
}

/// Who made a request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Caller {
    pub user: u32,
    pub org: u32,
}

pub(super) struct Traffic {
    topics: Topics,
    rng: SmallRng,
    /// Users at the start, which set the rates (sign-ups during the period stay idle).
    users: u32,
    /// Who starts the next session, by the users' activity.
    activity: Weighted,
    /// Users in a session now; they do not start another.
    busy: Vec<bool>,
    sessions: Vec<Session>,
    /// Slots of `sessions` free for reuse.
    free: Vec<usize>,
    /// When each open session takes its next step.
    queue: BinaryHeap<Reverse<(i64, usize)>>,
    next_session: u64,
    next_connection: u64,
    /// Instance names per service, and how requests spread over them.
    instances: Vec<Vec<String>>,
    instance_pick: Vec<Weighted>,
    /// Route popularity per service (Zipf).
    route_pick: Vec<Weighted>,
    /// Services browsed by learners and by staff.
    browse: [Weighted; 2],
    health: Health,
    /// Per user, per experiment: exposures and conversion bits.
    experiments: Vec<[u8; EXPERIMENTS]>,
    /// Exam attempts so far per (user, exam).
    attempts: HashMap<(u32, u32), i64>,
    /// The status of the latest request through the gateway: what follows a request
    /// (a saga) happens only if it succeeded.
    last_status: i64,
    /// The rest of the platform, each with its own random stream so that it leaves the
    /// requests' draws alone: calls to external providers, the event bus's sagas and
    /// replays, dependency health checks, and collaboration and deliveries.
    external: External,
    bus: Bus,
    checks: Checks,
    realtime: Realtime,
}

impl Traffic {
    pub(super) fn new(out: &Out, world: &World, seed: u64, start: i64, end: i64) -> Traffic {
        let mut rng = stream(seed, 3);
        let topics = Topics {
            gateway: out.topic("gateway.requests"),
            calls: out.topic("integration.service_calls"),
            progress: out.topic("learning.progress"),
            assessments: out.topic("assessment.completions"),
            interactions: out.topic("interactions"),
            exposures: out.topic("experiments.exposures"),
            connections: out.topic("realtime.connections"),
        };
        let health = Health::build(&mut rng, start, end);
        let users = world.users.len() as u32;
        Traffic {
            external: External::new(out, world, stream(seed, 4), end),
            bus: Bus::new(out, &health, stream(seed, 5), users, end),
            checks: Checks::new(out, stream(seed, 6), users, end),
            realtime: Realtime::new(out, world, stream(seed, 7), end),
            topics,
            rng,
            users: world.users.len() as u32,
            activity: Weighted::new(world.users.iter().map(|u| u.activity)),
            busy: vec![false; world.users.len()],
            sessions: Vec::new(),
            free: Vec::new(),
            queue: BinaryHeap::new(),
            next_session: 1,
            next_connection: 1,
            instances: SERVICES
                .iter()
                .zip(&PROFILES)
                .map(|(name, p)| (1..=p.instances.len()).map(|k| format!("{name}-{k}")).collect())
                .collect(),
            instance_pick: PROFILES.iter().map(|p| Weighted::new(p.instances.iter().copied())).collect(),
            route_pick: PROFILES.iter().map(|p| Weighted::zipf(p.routes.len(), 1.1)).collect(),
            browse: [Weighted::new(BROWSE_MIX), Weighted::new(STAFF_BROWSE_MIX)],
            health,
            experiments: vec![[0; EXPERIMENTS]; world.users.len()],
            attempts: HashMap::new(),
            last_status: 0,
        }
    }

    /// Everything that happens in the minute starting at `t0`.
    pub(super) fn minute(&mut self, out: &mut Out, world: &mut World, t0: i64) {
        let load = diurnal(t0);
        let users = f64::from(self.users);
        for _ in 0..poisson(&mut self.rng, SESSIONS_PER_USER_DAY * users / 1440.0 * load) {
            let at = t0 + self.rng.random_range(0..60_000);
            self.start_session(world, at);
        }
        for _ in 0..poisson(&mut self.rng, ANONYMOUS_PER_USER_DAY * users / 1440.0 * load) {
            let at = t0 + self.rng.random_range(0..60_000);
            self.anonymous(out, at);
        }
        for _ in 0..poisson(&mut self.rng, BACKGROUND_PER_USER_DAY * users / 1440.0) {
            let at = t0 + self.rng.random_range(0..60_000);
            let caller = *pick(&mut self.rng, &BACKGROUND_CALLERS);
            let callee = *pick(&mut self.rng, PROFILES[caller].deps);
            let correlation = self.rng.random();
            self.call_chain(out, at, SERVICES[caller], callee, correlation);
        }
        while let Some(&Reverse((at, sid))) = self.queue.peek() {
            if at >= t0 + 60_000 {
                break;
            }
            self.queue.pop();
            self.step(out, world, sid, at);
        }
        self.external.minute(out, t0);
        self.bus.minute(out, &self.health, t0);
        self.checks.minute(out, &self.health, t0);
        self.realtime.minute(out, world, t0);
    }

    fn start_session(&mut self, world: &World, at: i64) {
        // Busy users are skipped: a few tries, then the session does not happen.
        let Some(user) = (0..4)
            .filter_map(|_| self.activity.sample(&mut self.rng))
            .find(|&u| !self.busy[u])
            .map(|u| u as u32)
        else {
            return;
        };
        self.busy[user as usize] = true;
        let session = Session {
            user,
            id: self.next_session,
            connection: self.next_connection,
            signalr: chance(&mut self.rng, 0.15),
            hub: self.realtime.hub(),
            steps_left: (exponential(&mut self.rng, 20.0) as u32).clamp(3, 150),
            enrollment: world.study_enrollment(&mut self.rng, user),
            started: false,
        };
        self.next_session += 1;
        self.next_connection += 1;
        let sid = match self.free.pop() {
            Some(sid) => {
                self.sessions[sid] = session;
                sid
            }
            None => {
                self.sessions.push(session);
                self.sessions.len() - 1
            }
        };
        self.queue.push(Reverse((at, sid)));
    }

    fn step(&mut self, out: &mut Out, world: &mut World, sid: usize, t: i64) {
        let mut s = self.sessions[sid];
        let user = &world.users[s.user as usize];
        let who = Caller { user: s.user, org: user.org };
        let role = user.role;
        let end = if !s.started {
            s.started = true;
            self.connection(out, t, who, &s, "open");
            let route = if chance(&mut self.rng, 0.4) { &LOGIN } else { &REFRESH };
            let mut t = self.request(out, world, t, Some(who), AUTH, route);
            t = self.request(out, world, t + 50, Some(who), DIRECTORY, &USER);
            if chance(&mut self.rng, 0.5) {
                t = self.request(out, world, t + 30, Some(who), LEARNER_AI, &PATH);
            }
            self.expose(out, t, s.user, world, Trigger::Start);
            t
        } else if s.steps_left == 0 {
            self.connection(out, t, who, &s, "close");
            if chance(&mut self.rng, 0.3) {
                self.request(out, world, t, Some(who), AUTH, &LOGOUT);
            }
            self.busy[s.user as usize] = false;
            self.free.push(sid);
            return;
        } else {
            s.steps_left -= 1;
            let roll = self.rng.random::<f64>();
            let learner = role == Role::Learner;
            let end = match roll {
                r if learner && r < 0.12 => self.progress(out, world, t, who, &s),
                r if learner && r < 0.145 => self.assess(out, world, t, who, &s),
                r if r < (if learner { 0.37 } else { 0.25 }) => self.interact(out, world, t, who, &s),
                _ => self.browse(out, world, t, who, role),
            };
            if chance(&mut self.rng, 0.02) {
                let delivery = lognormal(&mut self.rng, 25.0, 0.6);
                self.connection_metric(out, end, who, &s, "message", delivery);
            }
            if chance(&mut self.rng, 0.01) {
                // A dropped connection: the client reconnects on a new one.
                self.connection(out, end, who, &s, "close");
                s.connection = self.next_connection;
                s.signalr = chance(&mut self.rng, 0.15);
                s.hub = self.realtime.hub();
                self.next_connection += 1;
                self.connection(out, end + 500, who, &s, "open");
            }
            end
        };
        self.sessions[sid] = s;
        let think = exponential(&mut self.rng, 45_000.0).clamp(3_000.0, 900_000.0) as i64;
        self.queue.push(Reverse((end + think, sid)));
    }

    fn browse(&mut self, out: &mut Out, world: &World, t: i64, who: Caller, role: Role) -> i64 {
        let mix = usize::from(role != Role::Learner);
        let pages = 1 + (exponential(&mut self.rng, 2.2) as u32).min(10);
        let mut t = t;
        for _ in 0..pages {
            let svc = self.browse[mix].sample(&mut self.rng).unwrap_or(COURSE_BUILDER);
            let route = &PROFILES[svc].routes[self.route_pick[svc].sample(&mut self.rng).unwrap_or(0)];
            let end = self.request(out, world, t, Some(who), svc, route);
            if route.method == "POST" && route.path == "/api/v1/enrollments" && self.last_status == route.ok {
                self.bus.saga(out, &self.health, Saga::Enrollment, end);
            }
            t = end + self.rng.random_range(100..2_500);
        }
        self.expose(out, t, who.user, world, Trigger::Browse);
        t
    }

    fn interact(&mut self, out: &mut Out, world: &World, t: i64, who: Caller, s: &Session) -> i64 {
        let rng = &mut self.rng;
        let (kind, svc) = match rng.random::<f64>() {
            r if r < 0.21 => ("chat", RAG_ASSISTANT),
            r if r < 0.30 => ("chat", LEARNER_AI),
            r if r < 0.50 => ("lab_run", DEVLAB),
            r if r < 0.78 => ("content_view", CONTENT_STUDIO),
            r if r < 0.88 => ("content_view", COURSE_BUILDER),
            r if r < 0.95 => ("audio_practice", LEARNER_AI),
            _ => ("audio_practice", CONTENT_STUDIO),
        };
        let mut end = match (kind, svc) {
            ("chat", RAG_ASSISTANT) => self.request(out, world, t, Some(who), svc, &CHAT),
            ("chat", _) => self.request(out, world, t, Some(who), svc, &COACH),
            ("lab_run", _) => {
                let mut end = self.request(out, world, t, Some(who), svc, &LAB_RUN);
                for _ in 0..self.rng.random_range(1..=3) {
                    end = self.request(out, world, end + 1_000, Some(who), svc, &RUN_STATUS);
                }
                end
            }
            ("content_view", COURSE_BUILDER) => self.request(out, world, t, Some(who), svc, &TOPIC),
            ("content_view", _) => {
                let mut end = self.request(out, world, t, Some(who), svc, &CONTENT);
                for _ in 0..self.rng.random_range(0..=2) {
                    end = self.request(out, world, end + 20, Some(who), svc, &ASSET);
                }
                end
            }
            (_, LEARNER_AI) => self.request(out, world, t, Some(who), svc, &AUDIO_EVAL),
            _ => self.request(out, world, t, Some(who), svc, &AUDIO_CONTENT),
        };
        match kind {
            "chat" => self.external.chat(out, t, who, svc),
            "audio_practice" => self.external.audio_practice(out, t, who, svc),
            _ => {}
        }
        let rng = &mut self.rng;
        let latency = match kind {
            "chat" => Some(lognormal(rng, 1_200.0, 0.5)),
            "lab_run" => Some(lognormal(rng, 3_500.0, 0.6)),
            _ => None,
        };
        let topic = s
            .enrollment
            .map(|e| &world.courses[world.enrollments[e as usize].course as usize])
            .filter(|_| chance(rng, 0.85))
            .map(|c| *pick(rng, &c.topics));
        let helpful = chance(rng, if kind == "chat" { 0.4 } else { 0.15 }).then(|| chance(rng, 0.75));
        let (omit_topic, omit_latency, omit_helpful) = (rng.random_bool(0.5), rng.random_bool(0.5), rng.random_bool(0.5));
        let (event_id, session_id) = (rng.random::<u128>(), s.id);
        if let Some(tix) = self.topics.interactions {
            out.event(tix, end, Key::Id("u-", u64::from(who.user) + 1), |o: &mut Obj<'_>| {
                o.uuid("event_id", event_id);
                o.ts("ts");
                o.id("user_id", "u-", u64::from(who.user) + 1);
                o.id("org_id", "org-", u64::from(who.org) + 1);
                o.id("session_id", "sess-", session_id);
                o.str("service", SERVICES[svc]);
                o.str("kind", kind);
                match topic {
                    Some(t) => o.id("topic_id", "t-", u64::from(t) + 1),
                    None => o.none("topic_id", omit_topic),
                }
                match latency {
                    Some(ms) => o.f64("latency_ms", ms, 1),
                    None => o.none("latency_ms", omit_latency),
                }
                match helpful {
                    Some(h) => o.bool("helpful", h),
                    None => o.none("helpful", omit_helpful),
                }
            });
        }
        if kind == "chat" {
            // The answer streams back over the realtime connection.
            for _ in 0..self.rng.random_range(1..=2) {
                let delivery = lognormal(&mut self.rng, 25.0, 0.6);
                end += 5;
                self.connection_metric(out, end, who, s, "message", delivery);
            }
            self.expose(out, end, who.user, world, Trigger::Chat);
        }
        end
    }

    fn progress(&mut self, out: &mut Out, world: &mut World, t: i64, who: Caller, s: &Session) -> i64 {
        let Some(e) = s.enrollment.filter(|&e| !world.enrollments[e as usize].deleted) else {
            return self.browse(out, world, t, who, Role::Learner);
        };
        let end = self.request(out, world, t, Some(who), COURSE_BUILDER, &PROGRESS);
        let enrollment = &mut world.enrollments[e as usize];
        let course = &world.courses[enrollment.course as usize];
        let topic = course.topics[(enrollment.position as usize) % course.topics.len().max(1)];
        let rng = &mut self.rng;
        let completed = chance(rng, 0.15);
        if completed {
            enrollment.position += 1;
        }
        let delta = rng.random_range(0.0..0.05);
        let minutes = lognormal(rng, 8.0, 0.7).clamp(1.0, 30.0);
        let (course_id, skill, event_id) = (enrollment.course, world.topics[topic as usize].skill, rng.random::<u128>());
        if let Some(tix) = self.topics.progress {
            out.event(tix, end, Key::Id("u-", u64::from(who.user) + 1), |o: &mut Obj<'_>| {
                o.uuid("event_id", event_id);
                o.ts("ts");
                o.id("user_id", "u-", u64::from(who.user) + 1);
                o.id("org_id", "org-", u64::from(who.org) + 1);
                o.id("course_id", "c-", u64::from(course_id) + 1);
                o.id("topic_id", "t-", u64::from(topic) + 1);
                o.id("skill_id", "sk-", u64::from(skill) + 1);
                o.id("session_id", "sess-", s.id);
                o.f64("progress_delta", delta, 4);
                o.f64("minutes_spent", minutes, 1);
                o.bool("completed", completed);
            });
        }
        self.expose(out, end, who.user, world, Trigger::Progress);
        end
    }

    fn assess(&mut self, out: &mut Out, world: &World, t: i64, who: Caller, s: &Session) -> i64 {
        let exam = s
            .enrollment
            .map(|e| &world.courses[world.enrollments[e as usize].course as usize].exams)
            .filter(|exams| !exams.is_empty())
            .map(|exams| *pick(&mut self.rng, exams))
            .filter(|&x| self.attempts.get(&(who.user, x)).copied().unwrap_or(0) < 3);
        let Some(exam) = exam else {
            return self.browse(out, world, t, who, Role::Learner);
        };
        let attempt = {
            let n = self.attempts.entry((who.user, exam)).or_insert(0);
            *n += 1;
            *n
        };
        let mut end = self.request(out, world, t, Some(who), ASSESSMENT, &START_ATTEMPT);
        for _ in 0..self.rng.random_range(1..=3) {
            let thinking = self.rng.random_range(20_000..90_000);
            end = self.request(out, world, end + thinking, Some(who), ASSESSMENT, &ANSWERS);
        }
        end = self.request(out, world, end + 2_000, Some(who), ASSESSMENT, &SUBMIT);
        // Scores cluster around 70 and improve a little with each attempt.
        let score = (beta(&mut self.rng, 7, 3) * 100.0 + 4.0 * (attempt - 1) as f64).min(100.0);
        let score = (score * 10.0).round() / 10.0;
        let (skill, event_id) = (world.exams[exam as usize].skill, self.rng.random::<u128>());
        if let Some(tix) = self.topics.assessments {
            out.event(tix, end, Key::Id("u-", u64::from(who.user) + 1), |o: &mut Obj<'_>| {
                o.uuid("event_id", event_id);
                o.ts("ts");
                o.id("user_id", "u-", u64::from(who.user) + 1);
                o.id("org_id", "org-", u64::from(who.org) + 1);
                o.id("exam_id", "ex-", u64::from(exam) + 1);
                o.id("skill_id", "sk-", u64::from(skill) + 1);
                o.f64("score", score, 1);
                o.bool("passed", score >= 60.0);
                o.int("attempt", attempt);
            });
        }
        self.bus.saga(out, &self.health, Saga::Grading, end);
        self.realtime.feedback(out, end, who, s.signalr);
        self.expose(out, end, who.user, world, Trigger::Assess);
        end
    }

    /// Experiments met at this kind of step: a first exposure, sometimes a repeat,
    /// and for the users who will convert, the conversion at a later visit.
    fn expose(&mut self, out: &mut Out, t: i64, user: u32, world: &World, trigger: Trigger) {
        let u = &world.users[user as usize];
        for (e, def) in EXPERIMENT_DEFS.iter().enumerate() {
            if def.trigger != trigger || u.experiments & (1 << e) == 0 {
                continue;
            }
            let variant = usize::from(u.treatment & (1 << e) != 0);
            let rng = &mut self.rng;
            let state = &mut self.experiments[user as usize][e];
            let exposures = *state & EXPOSURES;
            let value = if exposures == 0 {
                *state = 1 | if chance(rng, def.conversion[variant]) { WILL_CONVERT } else { 0 };
                None
            } else if *state & (WILL_CONVERT | CONVERTED) == WILL_CONVERT && chance(rng, 0.5) {
                *state |= CONVERTED;
                Some(lognormal(rng, def.value_median, 0.6))
            } else if exposures < 4 && chance(rng, 0.1) {
                *state += 1;
                None
            } else {
                continue;
            };
            let (event_id, omit) = (rng.random::<u128>(), rng.random_bool(0.5));
            if let Some(tix) = self.topics.exposures {
                out.event(tix, t + 1, Key::Id("u-", u64::from(user) + 1), |o: &mut Obj<'_>| {
                    o.uuid("event_id", event_id);
                    o.ts("ts");
                    o.id("user_id", "u-", u64::from(user) + 1);
                    o.id("experiment_id", "exp-", e as u64 + 1);
                    o.str("variant", VARIANTS[variant]);
                    match value {
                        Some(v) => {
                            o.str("outcome", "converted");
                            o.f64("value", v, 2);
                        }
                        None => {
                            o.str("outcome", "exposed");
                            o.none("value", omit);
                        }
                    }
                });
            }
        }
    }

    fn connection(&mut self, out: &mut Out, t: i64, who: Caller, s: &Session, action: &'static str) {
        let setup = lognormal(&mut self.rng, if s.signalr { 140.0 } else { 80.0 }, 0.5);
        self.connection_metric(out, t, who, s, action, setup);
    }

    /// A realtime connection event; `metric` is `setup_ms` on open, `delivery_ms` on a message.
    fn connection_metric(&mut self, out: &mut Out, t: i64, who: Caller, s: &Session, action: &'static str, metric: f64) {
        match action {
            "open" => self.realtime.online(who.user, Some(s.signalr)),
            "close" => self.realtime.online(who.user, None),
            _ => {}
        }
        let Some(tix) = self.topics.connections else { return };
        let (event_id, omit) = (self.rng.random::<u128>(), self.rng.random_bool(0.5));
        let (hub, omit_hub) = (s.signalr.then_some(HUBS[s.hub]), self.realtime.coin());
        let at = if action == "open" { t + metric as i64 } else { t };
        out.event(tix, at, Key::Id("u-", u64::from(who.user) + 1), |o: &mut Obj<'_>| {
            o.uuid("event_id", event_id);
            o.ts("ts");
            o.id("connection_id", "conn-", s.connection);
            o.id("user_id", "u-", u64::from(who.user) + 1);
            o.id("session_id", "sess-", s.id);
            o.str("transport", if s.signalr { "signalr" } else { "websocket" });
            o.str("action", action);
            match action {
                "open" => {
                    o.f64("setup_ms", metric, 1);
                    o.none("delivery_ms", omit);
                }
                "message" => {
                    o.none("setup_ms", omit);
                    o.f64("delivery_ms", metric, 1);
                }
                _ => {
                    o.none("setup_ms", omit);
                    o.none("delivery_ms", !omit);
                }
            }
            match hub {
                Some(hub) => o.str("hub", hub),
                None => o.none("hub", omit_hub),
            }
        });
    }

    /// A visitor without a token: the public catalogue and the login, and now and then
    /// a protected route, which the gateway turns away.
    fn anonymous(&mut self, out: &mut Out, t: i64) {
        let (svc, route) = match self.rng.random::<f64>() {
            r if r < 0.55 => (COURSE_BUILDER, &CATALOG),
            r if r < 0.75 => (COURSE_BUILDER, &COURSE),
            r if r < 0.88 => (AUTH, &LOGIN),
            r if r < 0.93 => (SKILLS_ENGINE, &SKILLS),
            _ => {
                let svc = self.rng.random_range(0..SERVICES.len());
                (svc, &PROFILES[svc].routes[self.route_pick[svc].sample(&mut self.rng).unwrap_or(0)])
            }
        };
        self.gateway(out, t, None, 0.015, svc, route);
    }

    fn request(&mut self, out: &mut Out, world: &World, t: i64, who: Option<Caller>, svc: Svc, route: &'static Route) -> i64 {
        let pressure = who.map_or(0.015, |c| world.orgs[c.org as usize].limit_pressure);
        self.gateway(out, t, who, pressure, svc, route)
    }

    /// One request through the gateway starting at `t`, with the service calls it
    /// causes; returns when the response left the gateway (its `ts`).
    fn gateway(&mut self, out: &mut Out, t: i64, who: Option<Caller>, pressure: f64, svc: Svc, route: &'static Route) -> i64 {
        let profile = &PROFILES[svc];
        let rng = &mut self.rng;
        let auth = match who {
            None if route.public => "ok",
            None => "missing",
            Some(_) => match rng.random::<f64>() {
                r if r < 0.004 => "denied",
                r if r < 0.008 => "expired",
                _ => "ok",
            },
        };
        let limited = auth == "ok" && chance(rng, pressure);
        let instance = self.instance_pick[svc].sample(rng).unwrap_or(0);
        let correlation: u128 = rng.random();
        let mut status = route.ok;
        let duration;
        if auth != "ok" || limited {
            status = match auth {
                "denied" => 403,
                "ok" => 429,
                _ => 401,
            };
            duration = lognormal(rng, 1.5, 0.5);
        } else {
            let mut cursor = t + 1;
            let mut dependency_failed = false;
            if who.is_some() && chance(&mut self.rng, 0.06) {
                // Token cache miss: the gateway asks auth.
                let (end, ok) = self.call_chain(out, cursor, "gateway", AUTH, correlation);
                cursor = end + 1;
                dependency_failed |= !ok;
            }
            let fanout = profile.fanout.floor() as u32 + u32::from(chance(&mut self.rng, profile.fanout.fract()));
            for _ in 0..fanout {
                let callee = *pick(&mut self.rng, profile.deps);
                let (end, ok) = self.call_chain(out, cursor, SERVICES[svc], callee, correlation);
                cursor = end + 1;
                dependency_failed |= !ok;
            }
            let rng = &mut self.rng;
            // Later instances run on older hardware: a little slower.
            let slowdown = 1.0 + 0.12 * instance as f64;
            let mut own = lognormal(rng, profile.median_ms * slowdown, profile.sigma);
            if chance(rng, 0.01) {
                own *= rng.random_range(3.0..10.0);
            }
            let health = self.health.at(svc, t);
            if chance(rng, health.fail * 0.8) && health.fail > HEALTHY.fail {
                status = if chance(rng, 0.4) { 504 } else { 503 };
                if status == 504 {
                    own = 5_000.0 + rng.random_range(0.0..50.0);
                }
            } else if dependency_failed && chance(rng, 0.5) {
                status = 502;
            } else {
                status = match rng.random::<f64>() {
                    r if r < 0.009 => 404,
                    r if r < 0.011 => 400,
                    r if r < 0.012 && route.method != "GET" => 409,
                    r if r < 0.015 => 500,
                    _ => status,
                };
            }
            duration = own + (cursor - t) as f64;
        }
        let bytes = match status {
            204 => 0,
            s if s >= 400 => rng_bytes(&mut self.rng, 180.0, 0.3),
            _ if route.path.ends_with("{assetId}") && chance(&mut self.rng, 0.01) => {
                // A course video download: beyond 32 bits.
                self.rng.random_range(2_200_000_000..6_000_000_000i64)
            }
            _ => rng_bytes(&mut self.rng, profile.bytes_median, 1.1),
        };
        let end = t + duration.ceil() as i64;
        self.last_status = status;
        let Some(tix) = self.topics.gateway else { return end };
        let request_id = self.rng.random::<u128>();
        let omit = chance(&mut self.rng, 0.2);
        let instance = &self.instances[svc][instance];
        let key = who.map_or(Key::None, |c| Key::Id("u-", u64::from(c.user) + 1));
        out.event(tix, end, key, |o: &mut Obj<'_>| {
            o.uuid("request_id", request_id);
            o.uuid("correlation_id", correlation);
            o.ts("ts");
            o.str("service", SERVICES[svc]);
            o.str("upstream_instance", instance);
            o.str("method", route.method);
            o.str("route", route.path);
            o.int("status", status);
            o.f64("duration_ms", duration, 3);
            match who.filter(|_| auth != "missing") {
                Some(c) => {
                    o.id("user_id", "u-", u64::from(c.user) + 1);
                    o.id("org_id", "org-", u64::from(c.org) + 1);
                }
                None => {
                    o.none("user_id", omit);
                    o.none("org_id", omit);
                }
            }
            o.str("auth_outcome", auth);
            o.bool("rate_limited", limited);
            o.int("bytes_out", bytes);
        });
        end
    }

    /// A call with its retries; returns when the last attempt ended and whether it succeeded.
    fn call_chain(&mut self, out: &mut Out, t: i64, caller: &'static str, callee: Svc, correlation: u128) -> (i64, bool) {
        let mut t = t;
        for attempt in 1..=3 {
            let health = self.health.at(callee, t);
            let rng = &mut self.rng;
            let ok = !chance(rng, health.fail);
            let (duration, error) = match (ok, health.breaker) {
                (true, _) => (lognormal(rng, PROFILES[callee].median_ms * 0.6, 0.7), None),
                (false, Breaker::Open) => (lognormal(rng, 0.3, 0.5), Some("circuit breaker open")),
                (false, _) => match rng.random_range(0..5) {
                    0 | 1 => (2_000.0 + rng.random_range(0.0..30.0), Some("timeout after 2000 ms")),
                    2 => (lognormal(rng, 8.0, 0.5), Some("503 Service Unavailable")),
                    3 => (lognormal(rng, 15.0, 0.5), Some("500 Internal Server Error")),
                    _ => (lognormal(rng, 3.0, 0.5), Some("connection reset by peer")),
                },
            };
            let operation = *pick(rng, PROFILES[callee].ops);
            let (call_id, omit) = (rng.random::<u128>(), rng.random_bool(0.4));
            if let Some(tix) = self.topics.calls {
                out.event(tix, t, Key::Uuid(correlation), |o: &mut Obj<'_>| {
                    o.uuid("call_id", call_id);
                    o.ts("ts");
                    o.str("caller", caller);
                    o.str("service", SERVICES[callee]);
                    o.str("operation", operation);
                    o.f64("duration_ms", duration, 3);
                    o.bool("success", ok);
                    match error {
                        Some(e) => o.str("error", e),
                        None => o.none("error", omit),
                    }
                    o.str("breaker_state", health.breaker.name());
                    o.int("attempt", attempt);
                    o.uuid("correlation_id", correlation);
                });
            }
            t += duration.ceil() as i64;
            let retry = !ok && health.breaker != Breaker::Open && attempt < 3 && chance(&mut self.rng, 0.7);
            if !retry {
                return (t, ok);
            }
            t += lognormal(&mut self.rng, 120.0 * attempt as f64, 0.3) as i64;
        }
        (t, false)
    }
}

fn rng_bytes(rng: &mut SmallRng, median: f64, sigma: f64) -> i64 {
    lognormal(rng, median, sigma).round().max(1.0) as i64
}
