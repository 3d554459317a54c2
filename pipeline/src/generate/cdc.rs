//! Service change feeds (contract §1.2): a snapshot (`r`) of every entity at the start,
//! then creates, updates and a few deletes over the period, with what a real Debezium
//! feed also carries: tombstones after deletes (and a few stray ones) and now and then
//! a stale re-send of an older change, with a lower `lsn`.
//!
//! Rows are kept per topic as values aligned with the schema's fields; the entities the
//! events depend on (users, organisations, enrollments, exams) change in the world too.

use rand::rngs::SmallRng;
use rand::Rng;

use super::dist::{chance, pick, poisson, Weighted};
use super::json::{Obj, Val};
use super::out::{Out, Tix};
use super::traffic::diurnal;
use super::world::{self, EnrollStatus, Role, User, World};
use crate::schema::{FieldSpec, FieldType, TopicKind};

/// Stale re-sends and stray tombstones per topic over the whole period.
const STALE_PER_TOPIC: usize = 3;
const STRAY_TOMBSTONES_PER_TOPIC: usize = 2;

const SCOPES: [&str; 7] =
    ["courses:read", "courses:write", "reports:read", "users:manage", "labs:run", "content:publish", "assessments:grade"];
const CONTENT_STATUSES: [&str; 4] = ["draft", "in_review", "published", "archived"];

/// The entities Sluice knows; any other CDC topic gets generic rows from its schema.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Entity {
    Users,
    Orgs,
    Assignments,
    Enrollments,
    Exams,
    RequiredSkills,
    Paths,
    Content,
    Labs,
    Sources,
    Permissions,
    Other,
}

impl Entity {
    fn of(topic: &str) -> Entity {
        match topic {
            "cdc.directory.users" => Entity::Users,
            "cdc.directory.organizations" => Entity::Orgs,
            "cdc.directory.teaching_assignments" => Entity::Assignments,
            "cdc.course_builder.enrollments" => Entity::Enrollments,
            "cdc.assessment.exams" => Entity::Exams,
            "cdc.skills_engine.required_skills" => Entity::RequiredSkills,
            "cdc.learner_ai.learning_paths" => Entity::Paths,
            "cdc.content_studio.content_items" => Entity::Content,
            "cdc.devlab.labs" => Entity::Labs,
            "cdc.rag_assistant.knowledge_sources" => Entity::Sources,
            "cdc.auth.permissions" => Entity::Permissions,
            _ => Entity::Other,
        }
    }

    /// Changes per live row and day, and the odds of create / update / delete.
    fn churn(self) -> (f64, [f64; 3]) {
        match self {
            Entity::Users => (0.01, [0.3, 0.6, 0.1]),
            Entity::Orgs => (0.05, [0.1, 0.9, 0.0]),
            Entity::Assignments => (0.02, [0.45, 0.25, 0.3]),
            Entity::Enrollments => (0.02, [0.4, 0.5, 0.1]),
            // An exam keeps its skill and its pass mark: exams are only added.
            Entity::Exams => (0.03, [1.0, 0.0, 0.0]),
            Entity::RequiredSkills => (0.03, [0.3, 0.5, 0.2]),
            Entity::Paths => (0.1, [0.2, 0.7, 0.1]),
            Entity::Content => (0.05, [0.3, 0.6, 0.1]),
            Entity::Labs => (0.03, [0.4, 0.6, 0.0]),
            Entity::Sources => (0.05, [0.2, 0.7, 0.1]),
            Entity::Permissions => (0.02, [0.4, 0.2, 0.4]),
            Entity::Other => (0.05, [0.3, 0.6, 0.1]),
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Entity::Users => "u-",
            Entity::Orgs => "org-",
            Entity::Assignments => "ta-",
            Entity::Enrollments => "en-",
            Entity::Exams => "ex-",
            Entity::RequiredSkills => "rq-",
            Entity::Paths => "lp-",
            Entity::Content => "ct-",
            Entity::Labs => "lab-",
            Entity::Sources => "ks-",
            Entity::Permissions => "perm-",
            Entity::Other => "id-",
        }
    }
}

#[derive(Debug)]
struct Row {
    key: String,
    /// `None` once deleted.
    vals: Option<Vec<Val>>,
    /// The `lsn` of the change that produced `vals`.
    lsn: u64,
    /// The row before its latest change and that change's `lsn`: what a stale re-send repeats.
    prev: Option<(u64, Vec<Val>)>,
    /// Index of the world entity behind the row (user, organisation, enrollment...).
    link: u32,
}

#[derive(Debug)]
struct Table {
    tix: Tix,
    entity: Entity,
    service: String,
    name: String,
    cols: Vec<FieldSpec>,
    pk: usize,
    rows: Vec<Row>,
    /// Rows that have been updated, for stale re-sends.
    updated: Vec<usize>,
    /// When to re-send a stale change and when to send a stray tombstone, latest first.
    stale_at: Vec<i64>,
    stray_at: Vec<i64>,
    lsn: u64,
    next_id: u64,
    /// Changes per minute at average load.
    rate: f64,
    ops: Weighted,
}

/// Relations only the change feeds need, drawn once from the world.
struct Staff {
    trainers: Vec<u32>,
    staff: Vec<u32>,
    active_learners: Vec<u32>,
    members: Vec<Vec<u32>>,
    tested_skills: Vec<u32>,
}

pub(super) struct Cdc {
    tables: Vec<Table>,
    rng: SmallRng,
    staff: Staff,
}

fn id(prefix: &str, n: u64) -> Val {
    Val::Str(format!("{prefix}{n}"))
}

fn nullable(rng: &mut SmallRng, v: Option<Val>) -> Val {
    v.unwrap_or_else(|| if rng.random_bool(0.5) { Val::Null } else { Val::Missing })
}

impl Cdc {
    pub(super) fn new(out: &Out, world: &World, rng: SmallRng, start: i64, end: i64) -> Cdc {
        let mut members = vec![Vec::new(); world.orgs.len()];
        for (i, u) in world.users.iter().enumerate() {
            members[u.org as usize].push(i as u32);
        }
        let of_role = |pred: &dyn Fn(&User) -> bool| -> Vec<u32> {
            world.users.iter().enumerate().filter(|(_, u)| pred(u)).map(|(i, _)| i as u32).collect()
        };
        let staff = Staff {
            trainers: of_role(&|u| u.role == Role::Trainer),
            staff: of_role(&|u| u.role != Role::Learner),
            active_learners: of_role(&|u| u.role == Role::Learner && u.activity > 0.0),
            members,
            tested_skills: world.tested_skills(),
        };
        let mut cdc = Cdc { tables: Vec::new(), rng, staff };
        // Stale re-sends come in the later part, once rows have been updated.
        let times = |rng: &mut SmallRng, from: i64, n: usize| {
            let mut at: Vec<i64> = (0..n).map(|_| rng.random_range(from..end.max(from + 1))).collect();
            at.sort_unstable_by(|a, b| b.cmp(a));
            at
        };
        for (tix, schema) in out.schemas().filter(|(_, s)| s.kind == TopicKind::Cdc) {
            let mut parts = schema.topic.splitn(3, '.').skip(1);
            let service = parts.next().unwrap_or_default().to_owned();
            let name = parts.next().unwrap_or_default().to_owned();
            let pk = schema.primary_key.as_deref().and_then(|pk| schema.fields.iter().position(|f| f.name == pk));
            let entity = Entity::of(&schema.topic);
            let (_, ops) = entity.churn();
            cdc.tables.push(Table {
                tix,
                entity,
                service,
                name,
                cols: schema.fields.clone(),
                pk: pk.unwrap_or(0),
                rows: Vec::new(),
                updated: Vec::new(),
                stale_at: times(&mut cdc.rng, start + (end - start) * 2 / 5, STALE_PER_TOPIC),
                stray_at: times(&mut cdc.rng, start, STRAY_TOMBSTONES_PER_TOPIC),
                lsn: 1_000 + cdc.rng.random_range(0..9_000),
                next_id: 1,
                rate: 0.0,
                ops: Weighted::new(ops),
            });
        }
        cdc
    }

    /// Every entity as of `at`, as snapshot reads.
    pub(super) fn snapshot(&mut self, out: &mut Out, world: &World, at: i64) {
        for t in 0..self.tables.len() {
            let entity = self.tables[t].entity;
            for (link, pairs) in self.initial(world, entity) {
                self.insert(out, t, at, "r", link, pairs);
            }
            let table = &mut self.tables[t];
            table.rate = table.rows.len().max(1) as f64 * entity.churn().0 / 1440.0;
        }
    }

    /// The rows an entity starts with: `(link, fields)`.
    fn initial(&mut self, world: &World, entity: Entity) -> Vec<(u32, Vec<(&'static str, Val)>)> {
        let rng = &mut self.rng;
        let mut rows = Vec::new();
        match entity {
            Entity::Users => rows.extend((0..world.users.len() as u32).map(|u| (u, user_row(rng, world, u)))),
            Entity::Orgs => rows.extend((0..world.orgs.len() as u32).map(|o| (o, org_row(world, o)))),
            Entity::Enrollments => {
                rows.extend((0..world.enrollments.len() as u32).map(|e| (e, enrollment_row(world, e))))
            }
            Entity::Exams => rows.extend((0..world.exams.len() as u32).map(|x| (x, exam_row(world, x)))),
            Entity::Assignments => {
                for &trainer in &self.staff.trainers {
                    for _ in 0..rng.random_range(2..=6) {
                        rows.extend(assignment_row(rng, world, &self.staff, trainer).map(|r| (0, r)));
                    }
                }
            }
            Entity::RequiredSkills => {
                for org in 0..world.orgs.len() as u32 {
                    let mut skills = self.staff.tested_skills.clone();
                    for _ in 0..rng.random_range(3..=6usize).min(skills.len()) {
                        let skill = skills.swap_remove(rng.random_range(0..skills.len()));
                        rows.push((0, requirement_row(rng, org, skill)));
                    }
                }
            }
            Entity::Paths => {
                for &u in &self.staff.active_learners {
                    if chance(rng, 0.2) {
                        rows.extend(path_row(rng, world, u).map(|r| (0, r)));
                    }
                }
            }
            Entity::Content | Entity::Labs | Entity::Sources => {
                let share = match entity {
                    Entity::Content => 0.8,
                    Entity::Labs => 0.25,
                    _ => 0.3,
                };
                for topic in 0..world.topics.len() as u32 {
                    if chance(rng, share) {
                        rows.push((0, topic_row(rng, entity, topic, "published")));
                    }
                }
            }
            Entity::Permissions => {
                for &u in &self.staff.staff {
                    let grants = if world.users[u as usize].role == Role::OrgAdmin { 3 } else { 1 };
                    for _ in 0..rng.random_range(1..=grants) {
                        rows.push((0, permission_row(rng, u)));
                    }
                }
            }
            Entity::Other => rows.extend((0..50).map(|_| (0, Vec::new()))),
        }
        rows
    }

    /// The changes of the minute starting at `t0`.
    pub(super) fn minute(&mut self, out: &mut Out, world: &mut World, t0: i64) {
        let load = diurnal(t0);
        for t in 0..self.tables.len() {
            let changes = poisson(&mut self.rng, self.tables[t].rate * load);
            for _ in 0..changes {
                let at = t0 + self.rng.random_range(0..60_000);
                match self.tables[t].ops.sample(&mut self.rng) {
                    Some(1) if self.update(out, world, t, at) => {}
                    Some(2) if self.delete(out, world, t, at) => {}
                    _ => self.create(out, world, t, at),
                }
            }
            while let Some(at) = self.tables[t].stale_at.pop_if(|at| *at < t0 + 60_000) {
                self.stale(out, t, at);
            }
            while let Some(at) = self.tables[t].stray_at.pop_if(|at| *at < t0 + 60_000) {
                let table = &self.tables[t];
                if !table.rows.is_empty() {
                    out.tombstone(table.tix, at, &table.rows[self.rng.random_range(0..table.rows.len())].key);
                }
            }
        }
    }

    fn create(&mut self, out: &mut Out, world: &mut World, t: usize, at: i64) {
        let rng = &mut self.rng;
        let staff = &mut self.staff;
        let created = match self.tables[t].entity {
            Entity::Users => {
                let org = rng.random_range(0..world.orgs.len() as u32);
                world.users.push(User {
                    org,
                    role: Role::Learner,
                    display_name: world::display_name(rng),
                    locale: world::locale(rng),
                    // New sign-ups have not started yet within the generated period.
                    activity: 0.0,
                    enrollments: Vec::new(),
                    experiments: 0,
                    treatment: 0,
                });
                let u = world.users.len() as u32 - 1;
                staff.members[org as usize].push(u);
                Some((u, user_row(rng, world, u)))
            }
            Entity::Orgs => {
                world.orgs.push(world::Org {
                    name: world::org_name(rng),
                    target_completion_rate: world::target_completion_rate(rng),
                    limit_pressure: 0.01,
                });
                staff.members.push(Vec::new());
                let o = world.orgs.len() as u32 - 1;
                Some((o, org_row(world, o)))
            }
            Entity::Enrollments => {
                let user = (!staff.active_learners.is_empty()).then(|| *pick(rng, &staff.active_learners));
                user.and_then(|u| world.enroll(rng, u, at, EnrollStatus::Active)).map(|e| (e, enrollment_row(world, e)))
            }
            Entity::Exams => {
                let course = rng.random_range(0..world.courses.len());
                let skill = *pick(rng, &world.courses[course].skills);
                world.exams.push(world::Exam { skill });
                let x = world.exams.len() as u32 - 1;
                world.courses[course].exams.push(x);
                Some((x, exam_row(world, x)))
            }
            Entity::Assignments => (!staff.trainers.is_empty())
                .then(|| *pick(rng, &staff.trainers))
                .and_then(|trainer| assignment_row(rng, world, staff, trainer))
                .map(|r| (0, r)),
            Entity::RequiredSkills => (!staff.tested_skills.is_empty()).then(|| {
                let org = rng.random_range(0..world.orgs.len() as u32);
                let skill = *pick(rng, &staff.tested_skills);
                (0, requirement_row(rng, org, skill))
            }),
            Entity::Paths => (!staff.active_learners.is_empty())
                .then(|| *pick(rng, &staff.active_learners))
                .and_then(|u| path_row(rng, world, u))
                .map(|r| (0, r)),
            entity @ (Entity::Content | Entity::Labs | Entity::Sources) => {
                let topic = rng.random_range(0..world.topics.len() as u32);
                Some((0, topic_row(rng, entity, topic, "draft")))
            }
            Entity::Permissions => (!staff.staff.is_empty()).then(|| {
                let user = *pick(rng, &staff.staff);
                (0, permission_row(rng, user))
            }),
            Entity::Other => Some((0, Vec::new())),
        };
        if let Some((link, pairs)) = created {
            self.insert(out, t, at, "c", link, pairs);
        }
    }

    /// Adds a row and emits it as a snapshot read or a create.
    fn insert(&mut self, out: &mut Out, t: usize, at: i64, op: &str, link: u32, pairs: Vec<(&'static str, Val)>) {
        let table = &mut self.tables[t];
        let mut vals: Vec<Val> = table
            .cols
            .iter()
            .map(|col| match pairs.iter().find(|(name, _)| *name == col.name) {
                Some((_, v)) => v.clone(),
                None => generic(&mut self.rng, col),
            })
            .collect();
        // Entities built here number their own ids; world entities bring theirs.
        let given = pairs.iter().any(|(name, _)| *name == table.cols[table.pk].name);
        let key = match (&vals[table.pk], given) {
            (Val::Str(key), true) => key.clone(),
            _ => format!("{}{}", table.entity.id_prefix(), table.next_id),
        };
        vals[table.pk] = Val::Str(key.clone());
        table.next_id += 1;
        table.lsn += 1;
        emit(out, table, at, Change { op, key: &key, before: None, after: Some(&vals), lsn: table.lsn });
        table.rows.push(Row { key, vals: Some(vals), lsn: table.lsn, prev: None, link });
    }

    fn update(&mut self, out: &mut Out, world: &mut World, t: usize, at: i64) -> bool {
        let rng = &mut self.rng;
        let table = &mut self.tables[t];
        let Some(r) = live_row(rng, table, |_| true) else { return false };
        let Some(before) = table.rows[r].vals.clone() else { return false };
        let mut after = before.clone();
        let link = table.rows[r].link as usize;
        let cols = &table.cols;
        let mut set = |name: &str, v: Val| {
            if let Some(i) = cols.iter().position(|c| c.name == name) {
                after[i] = v;
            }
        };
        match table.entity {
            Entity::Users => match rng.random_range(0..10) {
                0 if world.users[link].role == Role::Learner => {
                    world.users[link].role = Role::Trainer;
                    set("role", Val::Str(Role::Trainer.name().into()));
                }
                0..=4 => {
                    let locale = world::locale(rng).map(|l| Val::Str(l.into()));
                    set("locale", nullable(rng, locale));
                }
                _ => set("display_name", Val::Str(world::display_name(rng))),
            },
            Entity::Orgs => {
                if chance(rng, 0.7) {
                    let rate = world::target_completion_rate(rng);
                    world.orgs[link].target_completion_rate = rate;
                    set("target_completion_rate", nullable(rng, rate.map(|r| Val::F64(r, 2))));
                } else {
                    world.orgs[link].name = world::org_name(rng);
                    set("name", Val::Str(world.orgs[link].name.clone()));
                }
            }
            Entity::Enrollments => {
                let enrollment = &mut world.enrollments[link];
                enrollment.status = match enrollment.status {
                    EnrollStatus::Active if chance(rng, 0.6) => EnrollStatus::Completed,
                    EnrollStatus::Active => EnrollStatus::Dropped,
                    _ => EnrollStatus::Active,
                };
                set("status", Val::Str(enrollment.status.name().into()));
            }
            Entity::Assignments => set("course_id", id("c-", rng.random_range(1..=world.courses.len() as u64))),
            Entity::RequiredSkills => set("required_level", Val::F64(f64::from(rng.random_range(30..=95u32)), 1)),
            Entity::Paths => {
                let topic = rng.random_range(0..world.topics.len() as u64);
                set("recommended_topic_id", id("t-", topic + 1));
            }
            Entity::Content => {
                let status = match &before[cols.iter().position(|c| c.name == "status").unwrap_or(0)] {
                    Val::Str(s) => CONTENT_STATUSES.iter().position(|x| x == s).map_or(0, |i| (i + 1) % CONTENT_STATUSES.len()),
                    _ => 0,
                };
                set("status", Val::Str(CONTENT_STATUSES[status].into()));
            }
            Entity::Labs => set("difficulty", Val::Int(rng.random_range(1..=5))),
            Entity::Sources => {
                let count = match &before[cols.iter().position(|c| c.name == "document_count").unwrap_or(0)] {
                    Val::Int(n) => *n,
                    _ => 0,
                };
                set("document_count", Val::Int(count + rng.random_range(1..=20)));
            }
            Entity::Permissions => set("scope", Val::Str((*pick(rng, &SCOPES)).into())),
            Entity::Exams | Entity::Other => {
                let col = rng.random_range(0..cols.len());
                if col != table.pk {
                    after[col] = generic(rng, &cols[col]);
                }
            }
        }
        table.lsn += rng.random_range(1..=3);
        let change = Change { op: "u", key: &table.rows[r].key, before: Some(&before), after: Some(&after), lsn: table.lsn };
        emit(out, table, at, change);
        let row = &mut table.rows[r];
        row.prev = Some((row.lsn, before));
        row.lsn = table.lsn;
        row.vals = Some(after);
        table.updated.push(r);
        true
    }

    fn delete(&mut self, out: &mut Out, world: &mut World, t: usize, at: i64) -> bool {
        let rng = &mut self.rng;
        let table = &mut self.tables[t];
        // Only dormant accounts are removed, so no event outlives its user.
        let Some(r) = live_row(rng, table, |row| table.entity != Entity::Users || world.users[row.link as usize].activity == 0.0)
        else {
            return false;
        };
        if table.entity == Entity::Enrollments {
            world.enrollments[table.rows[r].link as usize].deleted = true;
        }
        table.lsn += rng.random_range(1..=3);
        let before = table.rows[r].vals.take();
        let change = Change { op: "d", key: &table.rows[r].key, before: before.as_deref(), after: None, lsn: table.lsn };
        emit(out, table, at, change);
        // Debezium follows a delete with a tombstone for log compaction.
        out.tombstone(table.tix, at, &table.rows[r].key);
        true
    }

    /// Re-sends the change before a row's latest one: its `lsn` is lower than one
    /// already emitted for the key, so it must not win.
    fn stale(&mut self, out: &mut Out, t: usize, at: i64) {
        let table = &self.tables[t];
        if table.updated.is_empty() {
            return;
        }
        let row = &table.rows[*pick(&mut self.rng, &table.updated)];
        if let Some((lsn, vals)) = &row.prev {
            emit(out, table, at, Change { op: "u", key: &row.key, before: None, after: Some(vals), lsn: *lsn });
        }
    }
}

/// A random live row that `ok` accepts, after a few tries.
fn live_row(rng: &mut SmallRng, table: &Table, ok: impl Fn(&Row) -> bool) -> Option<usize> {
    if table.rows.is_empty() {
        return None;
    }
    (0..8).map(|_| rng.random_range(0..table.rows.len())).find(|&r| table.rows[r].vals.is_some() && ok(&table.rows[r]))
}

/// One change to a row, as the envelope tells it.
struct Change<'c> {
    op: &'c str,
    key: &'c str,
    before: Option<&'c [Val]>,
    after: Option<&'c [Val]>,
    lsn: u64,
}

/// Writes one change envelope.
fn emit(out: &mut Out, table: &Table, at: i64, change: Change<'_>) {
    let Change { op, key, before, after, lsn } = change;
    let cols = &table.cols;
    let write_row = |o: &mut Obj<'_>, row: &[Val]| {
        for (col, v) in cols.iter().zip(row) {
            o.val(&col.name, v);
        }
    };
    out.change(table.tix, at, key, after.is_some(), |o: &mut Obj<'_>| {
        o.str("op", op);
        o.int("ts_ms", at);
        match before {
            Some(row) => o.object("before", "before.", |o| write_row(o, row)),
            None => o.none("before", false),
        }
        match after {
            Some(row) => o.object("after", "after.", |o| write_row(o, row)),
            None => o.none("after", false),
        }
        o.object("source", "source.", |o| {
            o.str("service", &table.service);
            o.str("entity", &table.name);
            o.int("lsn", lsn as i64);
        });
    });
}

/// A plausible value for a field Sluice has no model of, from its type.
fn generic(rng: &mut SmallRng, col: &FieldSpec) -> Val {
    if col.nullable && chance(rng, 0.1) {
        return Val::Null;
    }
    match &col.ty {
        FieldType::String => Val::Str(format!("{}-{}", col.name, rng.random_range(1..1_000))),
        FieldType::Int | FieldType::Int64 => Val::Int(rng.random_range(0..100)),
        FieldType::Double => Val::F64(rng.random_range(0.0..100.0), 2),
        FieldType::Bool => Val::Bool(rng.random_bool(0.5)),
        FieldType::Timestamp => Val::Ts(1_767_225_600_000 + rng.random_range(0..86_400_000 * 59)),
        FieldType::Enum(values) if !values.is_empty() => Val::Str(pick(rng, values).clone()),
        FieldType::Enum(_) => Val::Null,
    }
}

fn user_row(rng: &mut SmallRng, world: &World, u: u32) -> Vec<(&'static str, Val)> {
    let user = &world.users[u as usize];
    vec![
        ("user_id", id("u-", u64::from(u) + 1)),
        ("org_id", id("org-", u64::from(user.org) + 1)),
        ("role", Val::Str(user.role.name().into())),
        ("display_name", Val::Str(user.display_name.clone())),
        ("locale", nullable(rng, user.locale.map(|l| Val::Str(l.into())))),
    ]
}

fn org_row(world: &World, o: u32) -> Vec<(&'static str, Val)> {
    let org = &world.orgs[o as usize];
    vec![
        ("org_id", id("org-", u64::from(o) + 1)),
        ("name", Val::Str(org.name.clone())),
        ("target_completion_rate", org.target_completion_rate.map_or(Val::Null, |r| Val::F64(r, 2))),
    ]
}

fn enrollment_row(world: &World, e: u32) -> Vec<(&'static str, Val)> {
    let en = &world.enrollments[e as usize];
    vec![
        ("enrollment_id", id("en-", u64::from(e) + 1)),
        ("user_id", id("u-", u64::from(en.user) + 1)),
        ("course_id", id("c-", u64::from(en.course) + 1)),
        ("status", Val::Str(en.status.name().into())),
        ("enrolled_at", Val::Ts(en.enrolled_at)),
    ]
}

fn exam_row(world: &World, x: u32) -> Vec<(&'static str, Val)> {
    vec![
        ("exam_id", id("ex-", u64::from(x) + 1)),
        ("skill_id", id("sk-", u64::from(world.exams[x as usize].skill) + 1)),
        ("pass_mark", Val::F64(60.0, 1)),
    ]
}

/// A trainer teaching a learner of the same organisation in one of the learner's courses.
fn assignment_row(rng: &mut SmallRng, world: &World, staff: &Staff, trainer: u32) -> Option<Vec<(&'static str, Val)>> {
    let members = &staff.members[world.users[trainer as usize].org as usize];
    let student = (0..6)
        .map(|_| *pick(rng, members))
        .find(|&m| world.users[m as usize].role == Role::Learner && !world.users[m as usize].enrollments.is_empty())?;
    let enrollment = *pick(rng, &world.users[student as usize].enrollments);
    Some(vec![
        ("trainer_id", id("u-", u64::from(trainer) + 1)),
        ("student_id", id("u-", u64::from(student) + 1)),
        ("course_id", id("c-", u64::from(world.enrollments[enrollment as usize].course) + 1)),
    ])
}

fn requirement_row(rng: &mut SmallRng, org: u32, skill: u32) -> Vec<(&'static str, Val)> {
    vec![
        ("org_id", id("org-", u64::from(org) + 1)),
        ("skill_id", id("sk-", u64::from(skill) + 1)),
        ("required_level", Val::F64(f64::from(rng.random_range(50..=90u32)), 1)),
    ]
}

/// The next topic a learner should take for a skill of one of their courses.
fn path_row(rng: &mut SmallRng, world: &World, u: u32) -> Option<Vec<(&'static str, Val)>> {
    let enrollments = &world.users[u as usize].enrollments;
    if enrollments.is_empty() {
        return None;
    }
    let enrollment = *pick(rng, enrollments);
    let course = &world.courses[world.enrollments[enrollment as usize].course as usize];
    let topic = *pick(rng, &course.topics);
    Some(vec![
        ("user_id", id("u-", u64::from(u) + 1)),
        ("skill_id", id("sk-", u64::from(world.topics[topic as usize].skill) + 1)),
        ("recommended_topic_id", id("t-", u64::from(topic) + 1)),
    ])
}

/// A content item, lab or knowledge source about a topic.
fn topic_row(rng: &mut SmallRng, entity: Entity, topic: u32, status: &str) -> Vec<(&'static str, Val)> {
    let mut row = vec![("topic_id", id("t-", u64::from(topic) + 1))];
    match entity {
        Entity::Content => {
            row.push(("creation_method", Val::Str(if chance(rng, 0.35) { "ai" } else { "manual" }.into())));
            row.push(("status", Val::Str(status.into())));
        }
        Entity::Labs => row.push(("difficulty", Val::Int(rng.random_range(1..=5)))),
        _ => row.push(("document_count", Val::Int(rng.random_range(1..=400)))),
    }
    row
}

fn permission_row(rng: &mut SmallRng, u: u32) -> Vec<(&'static str, Val)> {
    vec![("user_id", id("u-", u64::from(u) + 1)), ("scope", Val::Str((*pick(rng, &SCOPES)).into()))]
}
