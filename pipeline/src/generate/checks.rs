//! Dependency health checks (`monitoring.health_checks`): every service probes the
//! services it calls and its own infrastructure (database, cache, queue, storage) on a
//! fixed period. What a probe sees follows the services' degradation episodes (the
//! `Health` model behind the failing calls), so an incident shows here too: degraded
//! while its service fails part of its calls, unhealthy while callers' breakers are open.

use rand::rngs::SmallRng;
use rand::Rng;

use super::dist::{chance, lognormal};
use super::json::Obj;
use super::out::{Key, Out, Tix};
use super::traffic::{dependencies, Breaker, Health, Phase, Svc, HEALTHY, SERVICES};

/// The probe period of a full-size platform.
const PERIOD_MS: i64 = 30_000;
/// Users of a full-size platform. A smaller generated platform probes less often (by
/// whole multiples of the period, at most `MAX_STRETCH`), so that health checks stay a
/// small share of its traffic as they are of a real platform's.
const FULL_SIZE_USERS: u32 = 3_000;
const MAX_STRETCH: i64 = 10;
/// A probe gives up after this long.
const TIMEOUT_MS: f64 = 2_000.0;

/// The infrastructure each service depends on, with a probe's median round trip (ms);
/// the first is the service's own database.
const INFRA: [&[(&str, f64)]; 9] = [
    &[("postgres", 2.5), ("redis", 0.8)],
    &[("postgres", 3.0), ("redis", 0.8), ("service_bus", 12.0)],
    &[("postgres", 3.0), ("service_bus", 12.0)],
    &[("postgres", 2.5), ("service_bus", 12.0)],
    &[("postgres", 3.0), ("redis", 0.9), ("service_bus", 12.0)],
    &[("postgres", 3.0), ("blob_storage", 18.0), ("service_bus", 12.0)],
    &[("postgres", 2.5), ("redis", 0.8)],
    &[("postgres", 4.0), ("redis", 0.9)],
    &[("postgres", 2.0), ("redis", 0.7)],
];
/// Median round trip of a probe of another service's health endpoint.
const SERVICE_PROBE_MS: f64 = 6.0;

/// What a service probes.
#[derive(Debug, Clone, Copy)]
enum Target {
    Service(Svc),
    /// Infrastructure, named, with its median round trip.
    Infra(&'static str, f64),
    /// The service's own database: its incidents show there too (a slow database is
    /// the usual cause).
    Database(&'static str, f64),
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    service: Svc,
    target: Target,
    /// Where in the period this probe fires.
    offset: i64,
}

pub(super) struct Checks {
    topic: Option<Tix>,
    rng: SmallRng,
    probes: Vec<Probe>,
    period: i64,
    end: i64,
}

impl Checks {
    pub(super) fn new(out: &Out, mut rng: SmallRng, users: u32, end: i64) -> Checks {
        let stretch = i64::from(FULL_SIZE_USERS.div_ceil(users.max(1))).clamp(1, MAX_STRETCH);
        let period = PERIOD_MS * stretch;
        let mut probes = Vec::new();
        for (service, infra) in INFRA.iter().enumerate() {
            let targets = dependencies(service)
                .iter()
                .map(|&d| Target::Service(d))
                .chain(infra.iter().enumerate().map(|(i, &(name, ms))| match i {
                    0 => Target::Database(name, ms),
                    _ => Target::Infra(name, ms),
                }));
            for target in targets {
                probes.push(Probe { service, target, offset: rng.random_range(0..period) });
            }
        }
        Checks { topic: out.topic("monitoring.health_checks"), rng, probes, period, end }
    }

    /// The probes that fire in the minute starting at `t0`.
    pub(super) fn minute(&mut self, out: &mut Out, health: &Health, t0: i64) {
        let Some(tix) = self.topic else { return };
        for p in 0..self.probes.len() {
            let probe = self.probes[p];
            let mut t = t0 + (probe.offset - t0).rem_euclid(self.period);
            while t < t0 + 60_000 {
                self.check(out, tix, health, probe, t);
                t += self.period;
            }
        }
    }

    /// One probe fired at `t`, written when it returns.
    fn check(&mut self, out: &mut Out, tix: Tix, health: &Health, probe: Probe, t: i64) {
        let rng = &mut self.rng;
        let (phase, median) = match probe.target {
            Target::Service(d) => (health.at(d, t), SERVICE_PROBE_MS),
            Target::Database(_, ms) => (health.at(probe.service, t), ms),
            Target::Infra(_, ms) => (HEALTHY, ms),
        };
        let status = status(rng, phase);
        let latency = match status {
            "healthy" => lognormal(rng, median, 0.5),
            "degraded" => (lognormal(rng, median * 20.0 + 150.0, 0.4)).min(TIMEOUT_MS * 0.9),
            // Timed out, or refused at once.
            _ if chance(rng, 0.7) => TIMEOUT_MS + rng.random_range(0.0..60.0),
            _ => lognormal(rng, 1.5, 0.5),
        };
        let at = t + rng.random_range(0..400) + latency.ceil() as i64;
        if at >= self.end {
            return;
        }
        let check_id = rng.random::<u128>();
        let dependency = match probe.target {
            Target::Service(d) => SERVICES[d],
            Target::Infra(name, _) | Target::Database(name, _) => name,
        };
        out.event(tix, at, Key::Text(SERVICES[probe.service]), |o: &mut Obj<'_>| {
            o.uuid("check_id", check_id);
            o.ts("ts");
            o.str("service", SERVICES[probe.service]);
            o.str("dependency", dependency);
            o.str("status", status);
            o.f64("latency_ms", latency, 3);
        });
    }
}

/// What a probe reports during a phase of its target's health: mostly healthy outside
/// episodes, degraded or unhealthy while it fails calls, unhealthy while breakers are
/// open, recovering in the last half-open probe.
fn status(rng: &mut SmallRng, phase: Phase) -> &'static str {
    let (degraded, unhealthy) = match phase.breaker {
        _ if phase.fail <= HEALTHY.fail => (0.002, 0.0005),
        Breaker::Closed => (0.5, 0.35),
        Breaker::Open => (0.1, 0.85),
        Breaker::HalfOpen if phase.fail < 0.5 => (0.35, 0.05),
        Breaker::HalfOpen => (0.5, 0.3),
    };
    match rng.random::<f64>() {
        r if r < unhealthy => "unhealthy",
        r if r < unhealthy + degraded => "degraded",
        _ => "healthy",
    }
}
