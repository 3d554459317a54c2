//! The realtime side of the platform beyond the sessions' own connections: the SignalR
//! hub each connection joins, collaborative sessions (`realtime.collaboration`) where a
//! few people of one organisation edit, chat and talk together, and deliveries of
//! feedback and notifications (`realtime.deliveries`) through their statuses.

use rand::rngs::SmallRng;
use rand::Rng;

use super::dist::{chance, exponential, lognormal, pick, poisson, Weighted};
use super::json::Obj;
use super::out::{Key, Out, Tix};
use super::traffic::{diurnal, Caller};
use super::world::World;

/// SignalR hubs, and the share of connections each gets.
pub(super) const HUBS: [&str; 4] = ["learningHub", "notificationHub", "chatHub", "collaborationHub"];
const HUB_SHARES: [f64; 4] = [0.45, 0.25, 0.2, 0.1];

/// Collaborative sessions started per user and day.
const COLLAB_PER_USER_DAY: f64 = 0.1;
/// Share of collaborative sessions that break for longer than the 30-minute session
/// gap and resume under the same id: one id, two session windows.
const P_RESUMED: f64 = 0.12;
/// Notifications (reminders, new content, recommendations...) per user and day.
const NOTIFICATIONS_PER_USER_DAY: f64 = 1.2;
/// Share of deliveries that fail after being sent.
const P_DELIVERY_FAILS: f64 = 0.03;
/// Share of deliveries written without their organisation.
const P_NO_ORG: f64 = 0.15;

/// Who sends notifications, and how often, by service.
const NOTIFIERS: [(&str, f64); 6] = [
    ("course_builder", 0.35),
    ("content_studio", 0.25),
    ("learner_ai", 0.15),
    ("skills_engine", 0.10),
    ("assessment", 0.10),
    ("directory", 0.05),
];

/// How a channel delivers: median delays (ms) from the cause to sent, from sent to
/// delivered and from delivered to read, how often the user reads, and its failures.
struct Channel {
    name: &'static str,
    sent_ms: f64,
    delivered_ms: f64,
    read_ms: f64,
    p_read: f64,
    errors: &'static [&'static str],
}

static WEBSOCKET: Channel = Channel {
    name: "websocket",
    sent_ms: 35.0,
    delivered_ms: 25.0,
    read_ms: 6_000.0,
    p_read: 0.8,
    errors: &["connection closed before delivery", "client acknowledgement timed out"],
};
static SIGNALR: Channel = Channel {
    name: "signalr",
    sent_ms: 45.0,
    delivered_ms: 30.0,
    read_ms: 6_000.0,
    p_read: 0.8,
    errors: &["hub connection lost", "client acknowledgement timed out"],
};
static PUSH: Channel = Channel {
    name: "push",
    sent_ms: 400.0,
    delivered_ms: 1_500.0,
    read_ms: 20.0 * 60_000.0,
    p_read: 0.45,
    errors: &["device token expired", "push service unavailable (503)"],
};
static EMAIL: Channel = Channel {
    name: "email",
    sent_ms: 1_500.0,
    delivered_ms: 6_000.0,
    read_ms: 90.0 * 60_000.0,
    p_read: 0.35,
    errors: &["mailbox unavailable (550)", "message rejected as spam"],
};

pub(super) struct Realtime {
    collaboration: Option<Tix>,
    deliveries: Option<Tix>,
    rng: SmallRng,
    hubs: Weighted,
    notifiers: Weighted,
    /// Users at the start, which set the rates.
    users: u32,
    /// Who starts a collaborative session, by the users' activity.
    activity: Weighted,
    /// Active members of each organisation, whom a session's starter invites.
    members: Vec<Vec<u32>>,
    /// Each user's organisation.
    orgs: Vec<u32>,
    /// Per user: connected now, and over SignalR.
    online: Vec<Option<bool>>,
    /// Events at or after this time fall outside the generated period.
    end: i64,
}

impl Realtime {
    pub(super) fn new(out: &Out, world: &World, rng: SmallRng, end: i64) -> Realtime {
        let mut members = vec![Vec::new(); world.orgs.len()];
        for (i, u) in world.users.iter().enumerate().filter(|(_, u)| u.activity > 0.0) {
            members[u.org as usize].push(i as u32);
        }
        Realtime {
            collaboration: out.topic("realtime.collaboration"),
            deliveries: out.topic("realtime.deliveries"),
            rng,
            hubs: Weighted::new(HUB_SHARES),
            notifiers: Weighted::new(NOTIFIERS.map(|(_, share)| share)),
            users: world.users.len() as u32,
            activity: Weighted::new(world.users.iter().map(|u| u.activity)),
            members,
            orgs: world.users.iter().map(|u| u.org).collect(),
            online: vec![None; world.users.len()],
            end,
        }
    }

    /// The hub a new SignalR connection joins (an index into [`HUBS`]).
    pub(super) fn hub(&mut self) -> usize {
        self.hubs.sample(&mut self.rng).unwrap_or(0)
    }

    /// A fair coin, for leaving out or writing null an optional field.
    pub(super) fn coin(&mut self) -> bool {
        self.rng.random_bool(0.5)
    }

    /// A user's connection opened (`Some(signalr)`) or closed (`None`).
    pub(super) fn online(&mut self, user: u32, connection: Option<bool>) {
        if let Some(slot) = self.online.get_mut(user as usize) {
            *slot = connection;
        }
    }

    /// Collaborative sessions and notifications of the minute starting at `t0`.
    pub(super) fn minute(&mut self, out: &mut Out, world: &World, t0: i64) {
        let rate = f64::from(self.users) / 1440.0 * diurnal(t0);
        for _ in 0..poisson(&mut self.rng, COLLAB_PER_USER_DAY * rate) {
            let at = t0 + self.rng.random_range(0..60_000);
            self.collab_session(out, world, at);
        }
        for _ in 0..poisson(&mut self.rng, NOTIFICATIONS_PER_USER_DAY * rate) {
            let at = t0 + self.rng.random_range(0..60_000);
            self.notification(out, at);
        }
    }

    /// Feedback on a submitted exam attempt: the score from assessment at once, and
    /// often a personalised explanation from the AI coach once it is written. Mostly
    /// over the learner's open connection, sometimes by email or push.
    pub(super) fn feedback(&mut self, out: &mut Out, t: i64, who: Caller, signalr: bool) {
        let live = if signalr { &SIGNALR } else { &WEBSOCKET };
        let rng = &mut self.rng;
        let channel = if chance(rng, 0.8) { live } else { offline(rng) };
        self.deliver(out, t, "feedback", who.user, "assessment", channel, 0.0);
        let rng = &mut self.rng;
        if chance(rng, 0.4) {
            let channel = if chance(rng, 0.8) { live } else { offline(rng) };
            let writing = lognormal(rng, 6_000.0, 0.5);
            self.deliver(out, t, "feedback", who.user, "learner_ai", channel, writing);
        }
    }

    /// A notification to any user, dormant ones included (reminders are for them too):
    /// over their connection if they are online, else by push or email.
    fn notification(&mut self, out: &mut Out, t: i64) {
        if self.users == 0 {
            return;
        }
        let rng = &mut self.rng;
        let user = rng.random_range(0..self.users);
        let source = NOTIFIERS[self.notifiers.sample(rng).unwrap_or(0)].0;
        let channel = match self.online[user as usize] {
            Some(signalr) if chance(rng, 0.85) => {
                if signalr {
                    &SIGNALR
                } else {
                    &WEBSOCKET
                }
            }
            _ => offline(rng),
        };
        self.deliver(out, t, "notification", user, source, channel, 0.0);
    }

    /// One delivery caused at `cause`: sent, then delivered, then (if the user looks)
    /// read; or sent and then failed. `latency_ms` counts from the cause, so it grows
    /// with each status; `preparing` is the time before sending (writing the feedback).
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        out: &mut Out,
        cause: i64,
        kind: &'static str,
        user: u32,
        source: &'static str,
        channel: &Channel,
        preparing: f64,
    ) {
        let rng = &mut self.rng;
        let id = rng.random::<u128>();
        let org = (!chance(rng, P_NO_ORG)).then(|| self.orgs.get(user as usize).copied().unwrap_or(0));
        let mut latency = preparing + lognormal(rng, channel.sent_ms, 0.5);
        let mut steps: Vec<(&'static str, f64, Option<&'static str>)> = vec![("sent", latency, None)];
        if chance(rng, P_DELIVERY_FAILS) {
            latency += lognormal(rng, channel.delivered_ms * 3.0, 0.6);
            let error = Some(*pick(rng, channel.errors)).filter(|_| !chance(rng, 0.1));
            steps.push(("failed", latency, error));
        } else {
            latency += lognormal(rng, channel.delivered_ms, 0.6);
            steps.push(("delivered", latency, None));
            if chance(rng, channel.p_read) {
                latency += lognormal(rng, channel.read_ms, 1.0);
                steps.push(("read", latency, None));
            }
        }
        let Some(tix) = self.deliveries else { return };
        for (status, latency, error) in steps {
            let at = cause + latency.ceil() as i64;
            if at >= self.end {
                break;
            }
            let omit = self.rng.random_bool(0.5);
            out.event(tix, at, Key::Id("u-", u64::from(user) + 1), |o: &mut Obj<'_>| {
                o.uuid("delivery_id", id);
                o.ts("ts");
                o.str("kind", kind);
                o.id("user_id", "u-", u64::from(user) + 1);
                match org {
                    Some(g) => o.id("org_id", "org-", u64::from(g) + 1),
                    None => o.none("org_id", omit),
                }
                o.str("source_service", source);
                o.str("channel", channel.name);
                o.str("status", status);
                o.f64("latency_ms", latency, 1);
                match error {
                    Some(e) => o.str("error", e),
                    None => o.none("error", !omit),
                }
            });
        }
    }

    /// A collaborative session started at `t`: two to six members of the starter's
    /// organisation join, edit, chat and talk with short pauses, and leave. Some
    /// sessions break for longer than the 30-minute gap (lunch, the next day's class)
    /// and resume under the same id, which makes two session windows.
    fn collab_session(&mut self, out: &mut Out, world: &World, t: i64) {
        let rng = &mut self.rng;
        let Some(starter) = self.activity.sample(rng).map(|u| u as u32) else { return };
        let org = self.orgs[starter as usize];
        let members = &self.members[org as usize];
        let wanted = rng.random_range(2..=6usize).min(members.len());
        let mut people = vec![starter];
        for _ in 0..wanted * 4 {
            if people.len() >= wanted {
                break;
            }
            let m = *pick(rng, members);
            if !people.contains(&m) {
                people.push(m);
            }
        }
        if people.len() < 2 {
            return;
        }
        // The topic studied together, from the starter's courses, when there is one.
        let topic = world.users[starter as usize]
            .enrollments
            .first()
            .map(|&e| &world.courses[world.enrollments[e as usize].course as usize].topics)
            .filter(|topics| !topics.is_empty() && chance(rng, 0.7))
            .map(|topics| *pick(rng, topics));
        let id = rng.random::<u128>();
        let sittings = if chance(rng, P_RESUMED) { 2 } else { 1 };
        let mut events: Vec<(i64, u32, &'static str)> = Vec::new();
        let mut t = t;
        for sitting in 0..sittings {
            if sitting > 0 {
                t += self.rng.random_range(35 * 60_000..150 * 60_000);
            }
            t = self.sitting(&mut events, &people, t, sitting > 0);
        }
        let Some(tix) = self.collaboration else { return };
        for (at, user, kind) in events {
            if at >= self.end {
                break;
            }
            let (event_id, omit) = (self.rng.random::<u128>(), self.rng.random_bool(0.5));
            out.event(tix, at, Key::Id("u-", u64::from(user) + 1), |o: &mut Obj<'_>| {
                o.uuid("event_id", event_id);
                o.ts("ts");
                o.uuid("collab_session_id", id);
                o.id("user_id", "u-", u64::from(user) + 1);
                o.id("org_id", "org-", u64::from(org) + 1);
                o.str("kind", kind);
                match topic {
                    Some(topic) => o.id("topic_id", "t-", u64::from(topic) + 1),
                    None => o.none("topic_id", omit),
                }
            });
        }
    }

    /// One sitting of a collaborative session from `t`, in time order; returns its
    /// last event's time. No two consecutive events are 30 minutes apart: joins come
    /// within ten minutes, pauses last at most 25.
    fn sitting(&mut self, events: &mut Vec<(i64, u32, &'static str)>, people: &[u32], t: i64, resumed: bool) -> i64 {
        let rng = &mut self.rng;
        // Not everyone comes back after a long break; the starter does.
        let mut present: Vec<u32> = people
            .iter()
            .copied()
            .enumerate()
            .filter(|&(i, _)| i == 0 || !resumed || !chance(rng, 0.2))
            .map(|(_, u)| u)
            .collect();
        let mut at = t;
        for (i, &u) in present.iter().enumerate() {
            if i > 0 {
                at += (lognormal(rng, 45_000.0, 1.0) as i64).clamp(500, 10 * 60_000);
            }
            events.push((at, u, "join"));
        }
        let stop = at + (lognormal(rng, 20.0 * 60_000.0, 0.6) as i64).clamp(3 * 60_000, 90 * 60_000);
        let mean_gap = 40_000.0 / (present.len() as f64).sqrt();
        while at < stop {
            at += if chance(rng, 0.01) {
                // A short break, within the session gap.
                rng.random_range(3 * 60_000..25 * 60_000)
            } else {
                (exponential(rng, mean_gap) as i64).clamp(200, 10 * 60_000)
            };
            let u = *pick(rng, &present);
            let kind = match rng.random::<f64>() {
                r if r < 0.6 => "edit",
                r if r < 0.9 => "chat",
                _ => "audio",
            };
            events.push((at, u, kind));
            // Someone leaves early now and then; the last one stays to the end.
            if present.len() > 1 && chance(rng, 0.01) {
                let i = rng.random_range(0..present.len());
                at += rng.random_range(200..5_000);
                events.push((at, present.swap_remove(i), "leave"));
            }
        }
        for u in present {
            at += rng.random_range(200..90_000);
            events.push((at, u, "leave"));
        }
        at
    }
}

/// A channel for a user who is not connected.
fn offline(rng: &mut SmallRng) -> &'static Channel {
    if chance(rng, 0.55) {
        &PUSH
    } else {
        &EMAIL
    }
}
