//! The platform's entities: organisations, users, the course catalogue, exams and
//! enrollments. Events and change feeds both read them, so they agree (a user's events
//! carry the user's organisation, an exam always tests the same skill).
//! Vectors are indexed from 0; ids are written from 1 (`u-1` is `users[0]`).

use rand::rngs::SmallRng;
use rand::Rng;

use super::dist::{chance, lognormal, pick, Weighted};

/// Experiments running during the generated period.
pub(super) const EXPERIMENTS: usize = 5;
/// Share of the users that each experiment enrols.
const EXPERIMENT_POPULATION: [f64; EXPERIMENTS] = [0.6, 0.5, 0.4, 0.7, 0.35];

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Role {
    Learner,
    Trainer,
    OrgAdmin,
}

impl Role {
    pub(super) fn name(self) -> &'static str {
        match self {
            Role::Learner => "learner",
            Role::Trainer => "trainer",
            Role::OrgAdmin => "org_admin",
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Org {
    pub name: String,
    pub target_completion_rate: Option<f64>,
    /// Share of the organisation's requests the gateway rate-limits.
    pub limit_pressure: f64,
}

#[derive(Debug, Clone)]
pub(super) struct User {
    pub org: u32,
    pub role: Role,
    pub display_name: String,
    pub locale: Option<&'static str>,
    /// Relative chance of starting a session; 0 for dormant accounts.
    pub activity: f64,
    /// Indexes into `World::enrollments`.
    pub enrollments: Vec<u32>,
    /// Bit e: the user takes part in experiment e.
    pub experiments: u8,
    /// Bit e: the user sees experiment e's treatment.
    pub treatment: u8,
}

#[derive(Debug, Clone)]
pub(super) struct Course {
    pub topics: Vec<u32>,
    pub skills: Vec<u32>,
    pub exams: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Topic {
    pub skill: u32,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Exam {
    pub skill: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum EnrollStatus {
    Active,
    Completed,
    Dropped,
}

impl EnrollStatus {
    pub(super) fn name(self) -> &'static str {
        match self {
            EnrollStatus::Active => "active",
            EnrollStatus::Completed => "completed",
            EnrollStatus::Dropped => "dropped",
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Enrollment {
    pub user: u32,
    pub course: u32,
    pub status: EnrollStatus,
    pub enrolled_at: i64,
    /// The topic (index in the course) the learner is working on.
    pub position: u32,
    pub deleted: bool,
}

#[derive(Debug, Clone)]
pub(super) struct World {
    pub orgs: Vec<Org>,
    pub users: Vec<User>,
    pub courses: Vec<Course>,
    pub topics: Vec<Topic>,
    pub exams: Vec<Exam>,
    pub enrollments: Vec<Enrollment>,
    /// Popularity of courses, for enrolling.
    pub course_popularity: Weighted,
}

const FIRST_NAMES: [&str; 32] = [
    "Ana", "Bruno", "Chen", "Dana", "Elif", "Farah", "Gabriel", "Hana", "Igor", "Jonas", "Kofi", "Lena", "Mateo",
    "Noa", "Olga", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Uma", "Victor", "Wei", "Ximena", "Yusuf", "Zoë",
    "José", "Łukasz", "Søren", "Amélie", "Björn", "Maël",
];
/// Names that need escaping in JSON.
const TRICKY_NAMES: [&str; 2] = ["Ana \"Nana\" Souza", "D'Arcy O\\Brien"];
const LOCALES: [&str; 8] = ["en-US", "en-GB", "pt-BR", "de-DE", "fr-FR", "es-ES", "he-IL", "ja-JP"];
const ORG_WORDS: [&str; 20] = [
    "Northwind", "Bluepeak", "Helios", "Cedar", "Quantum", "Riverstone", "Aurora", "Summit", "Lumen", "Atlas",
    "Evergreen", "Ironclad", "Nimbus", "Orbit", "Pioneer", "Redwood", "Silverline", "Tidewater", "Vertex", "Zenith",
];
const ORG_KINDS: [&str; 12] = [
    "Academy", "Labs", "Health", "Logistics", "Bank", "Retail", "Energy", "Software", "Telecom", "Insurance",
    "University", "Motors",
];

pub(super) fn display_name(rng: &mut SmallRng) -> String {
    if chance(rng, 0.005) {
        return (*pick(rng, &TRICKY_NAMES)).to_owned();
    }
    let initial = char::from(b'A' + rng.random_range(0..26u8));
    format!("{} {initial}.", pick(rng, &FIRST_NAMES))
}

pub(super) fn locale(rng: &mut SmallRng) -> Option<&'static str> {
    (!chance(rng, 0.1)).then(|| *pick(rng, &LOCALES))
}

pub(super) fn org_name(rng: &mut SmallRng) -> String {
    format!("{} {}", pick(rng, &ORG_WORDS), pick(rng, &ORG_KINDS))
}

pub(super) fn target_completion_rate(rng: &mut SmallRng) -> Option<f64> {
    (!chance(rng, 0.2)).then(|| f64::from(rng.random_range(50..=95u32)) / 100.0)
}

impl World {
    pub(super) fn build(rng: &mut SmallRng, users: u32, start_ms: i64) -> World {
        let n_orgs = ((f64::from(users) / 80.0).round() as u32).max(3);
        let orgs = (0..n_orgs)
            .map(|_| Org {
                name: org_name(rng),
                target_completion_rate: target_completion_rate(rng),
                limit_pressure: lognormal(rng, 0.009, 0.8).min(0.05),
            })
            .collect();

        let (courses, topics, exams) = catalogue(rng, users);
        let course_popularity = Weighted::zipf(courses.len(), 0.8);
        let org_sizes = Weighted::zipf(n_orgs as usize, 1.0);
        let mut members = vec![0u32; n_orgs as usize];
        let mut world = World {
            orgs,
            users: Vec::with_capacity(users as usize),
            courses,
            topics,
            exams,
            enrollments: Vec::new(),
            course_popularity,
        };
        for i in 0..users {
            // The first users seed every organisation; the rest follow the skewed sizes.
            let org = if i < n_orgs { i } else { org_sizes.sample(rng).unwrap_or(0) as u32 };
            let role = match members[org as usize] {
                0 => Role::OrgAdmin,
                1 => Role::Trainer,
                _ if chance(rng, 0.02) => Role::OrgAdmin,
                _ if chance(rng, 0.07) => Role::Trainer,
                _ => Role::Learner,
            };
            members[org as usize] += 1;
            let mut experiments = 0u8;
            let mut treatment = 0u8;
            for (e, share) in EXPERIMENT_POPULATION.iter().enumerate() {
                if chance(rng, *share) {
                    experiments |= 1 << e;
                }
                if chance(rng, 0.5) {
                    treatment |= 1 << e;
                }
            }
            let activity = if chance(rng, 0.15) { 0.0 } else { lognormal(rng, 1.0, 0.9) };
            world.users.push(User {
                org,
                role,
                display_name: display_name(rng),
                locale: locale(rng),
                activity,
                enrollments: Vec::new(),
                experiments,
                treatment,
            });
            if role == Role::Learner {
                let count = 1 + usize::from(chance(rng, 0.25)) + usize::from(chance(rng, 0.08));
                for _ in 0..count {
                    let at = start_ms - rng.random_range(1..180i64) * 86_400_000 - rng.random_range(0..86_400_000);
                    let status = match rng.random::<f64>() {
                        r if r < 0.80 => EnrollStatus::Active,
                        r if r < 0.92 => EnrollStatus::Completed,
                        _ => EnrollStatus::Dropped,
                    };
                    world.enroll(rng, i, at, status);
                }
            }
        }
        world
    }

    /// Enrolls a user in a course they do not take yet; returns the enrollment's index.
    pub(super) fn enroll(&mut self, rng: &mut SmallRng, user: u32, at: i64, status: EnrollStatus) -> Option<u32> {
        for _ in 0..8 {
            let course = self.course_popularity.sample(rng)? as u32;
            let taken = self.users[user as usize]
                .enrollments
                .iter()
                .any(|&e| self.enrollments[e as usize].course == course && !self.enrollments[e as usize].deleted);
            if taken {
                continue;
            }
            let topics = self.courses[course as usize].topics.len() as u32;
            let index = self.enrollments.len() as u32;
            self.enrollments.push(Enrollment {
                user,
                course,
                status,
                enrolled_at: at,
                position: rng.random_range(0..topics.max(1)),
                deleted: false,
            });
            self.users[user as usize].enrollments.push(index);
            return Some(index);
        }
        None
    }

    /// The user's enrollment to study in: an active one, else any that is not deleted.
    pub(super) fn study_enrollment(&self, rng: &mut SmallRng, user: u32) -> Option<u32> {
        let live: Vec<u32> = self.users[user as usize]
            .enrollments
            .iter()
            .copied()
            .filter(|&e| !self.enrollments[e as usize].deleted)
            .collect();
        let active: Vec<u32> =
            live.iter().copied().filter(|&e| self.enrollments[e as usize].status == EnrollStatus::Active).collect();
        match (active.is_empty(), live.is_empty()) {
            (false, _) => Some(*pick(rng, &active)),
            (true, false) => Some(*pick(rng, &live)),
            (true, true) => None,
        }
    }

    /// Skills that some exam tests: the ones an organisation can sensibly require.
    pub(super) fn tested_skills(&self) -> Vec<u32> {
        let mut skills: Vec<u32> = self.exams.iter().map(|e| e.skill).collect();
        skills.sort_unstable();
        skills.dedup();
        skills
    }
}

/// Courses with their topics, skills and exams; the catalogue grows slowly with users.
fn catalogue(rng: &mut SmallRng, users: u32) -> (Vec<Course>, Vec<Topic>, Vec<Exam>) {
    let n_courses = (users / 100).clamp(8, 80);
    let n_skills = (n_courses * 3 / 2).clamp(12, 150);
    let mut courses = Vec::with_capacity(n_courses as usize);
    let mut topics = Vec::new();
    let mut exams = Vec::new();
    for _ in 0..n_courses {
        let mut skills: Vec<u32> = Vec::with_capacity(3);
        while skills.len() < 3 {
            let s = rng.random_range(0..n_skills);
            if !skills.contains(&s) {
                skills.push(s);
            }
        }
        let course_topics = (0..rng.random_range(6..=14))
            .map(|_| {
                topics.push(Topic { skill: *pick(rng, &skills) });
                topics.len() as u32 - 1
            })
            .collect();
        let course_exams = (0..rng.random_range(1..=2usize))
            .map(|k| {
                exams.push(Exam { skill: skills[k] });
                exams.len() as u32 - 1
            })
            .collect();
        courses.push(Course { topics: course_topics, skills, exams: course_exams });
    }
    (courses, topics, exams)
}
