//! Post-data planning for a custom archive: which index, constraint and
//! trigger builds may run side by side on the load connections.
//!
//! Every post-data TOC entry becomes a [`PostJob`] that locks the tables it
//! touches, in the mode its statement takes on the server:
//!
//! ```text
//! CREATE INDEX                      share      (ShareLock: several builds on one
//!                                               table at once, as pg_restore -j)
//! ADD CONSTRAINT .. PRIMARY KEY/    split in two jobs:
//!   UNIQUE (cols)                     CREATE UNIQUE INDEX <name> ON <table> (cols)  share
//!                                     ADD CONSTRAINT <name> .. USING INDEX <name>   exclusive
//! everything else (FK, CHECK,       exclusive  (ShareRowExclusive or AccessExclusive:
//!   triggers, rules, attaches)                  alone on each table it touches)
//! ```
//!
//! The split matters where one table holds most of the data: a plain
//! `ADD CONSTRAINT .. PRIMARY KEY` takes an AccessExclusive lock for the
//! whole index build, so the table's other index builds would wait for it
//! while connections idle. Built as a unique index first, the primary key
//! builds beside them, and only the catalog step (`USING INDEX`, no scan)
//! needs the table alone. The result is the same constraint with the same
//! index (`pg_dump -s` of both agree; tests/postgres.rs checks it). Only
//! the exact form pg_dump writes for a plain constraint is split: anything
//! more (INCLUDE, WITH, a tablespace, DEFERRABLE, NULLS NOT DISTINCT, a
//! partitioned table, where `USING INDEX` is not allowed) runs as written.

use std::collections::HashMap;
use std::sync::Arc;

use super::archive::TocEntry;

/// How a job locks a table, among the jobs of one restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LockMode {
    /// Compatible with other share jobs on the table (`CREATE INDEX`).
    Share,
    /// Alone on the table.
    Exclusive,
}

/// One statement of the post-data phase.
#[derive(Debug)]
pub(super) struct PostJob {
    /// Bytes of the tables it works on (bigger first).
    pub weight: u64,
    pub sql: Arc<str>,
    /// The TOC object, for error messages.
    pub object: String,
    /// Jobs that must be done first.
    pub deps: Vec<usize>,
    /// Tables (TOC dump ids) it locks.
    pub locks: Vec<i32>,
    pub mode: LockMode,
}

/// The jobs for the post-data entries `post` of `toc`; `data_sizes` is the
/// COPY data loaded per TABLE DATA dump id (it weighs the tables).
pub(super) fn plan(
    toc: &[TocEntry],
    post: &[&TocEntry],
    data_sizes: &HashMap<i32, u64>,
    object_of: impl Fn(&TocEntry) -> String,
) -> Vec<PostJob> {
    let by_id: HashMap<i32, &TocEntry> = toc.iter().map(|e| (e.dump_id, e)).collect();
    let tables_of = |e: &TocEntry| -> Vec<i32> {
        e.dependencies
            .iter()
            .filter_map(|d| by_id.get(d))
            .filter(|d| d.desc == "TABLE")
            .map(|d| d.dump_id)
            .collect()
    };
    let mut table_bytes: HashMap<i32, u64> = HashMap::new();
    for e in toc.iter().filter(|e| e.desc == "TABLE DATA") {
        let bytes = data_sizes.get(&e.dump_id).copied().unwrap_or(0);
        for d in &e.dependencies {
            *table_bytes.entry(*d).or_default() += bytes;
        }
    }
    let splits: Vec<Option<(String, String)>> = post
        .iter()
        .map(|e| {
            let own = tables_of(e);
            let ordinary_table = own.len() == 1
                && by_id
                    .get(&own[0])
                    .is_some_and(|t| !t.defn.contains("PARTITION BY"));
            (e.desc == "CONSTRAINT" && ordinary_table)
                .then(|| split_unique_constraint(&e.defn))
                .flatten()
        })
        .collect();
    // The job that completes each entry: a split entry's second job (the
    // constraint exists only then), which the jobs depending on it wait for.
    let mut job_of: HashMap<i32, usize> = HashMap::new();
    let mut next = 0;
    for (e, split) in post.iter().zip(&splits) {
        next += if split.is_some() { 2 } else { 1 };
        job_of.insert(e.dump_id, next - 1);
    }
    let mut jobs: Vec<PostJob> = Vec::with_capacity(next);
    for (e, split) in post.iter().zip(splits) {
        let own = tables_of(e);
        let deps: Vec<usize> = e
            .dependencies
            .iter()
            .filter_map(|d| job_of.get(d).copied())
            .collect();
        let mut locks = own.clone();
        for d in e.dependencies.iter().filter(|d| job_of.contains_key(d)) {
            if let Some(dep) = by_id.get(d) {
                locks.extend(tables_of(dep));
            }
        }
        locks.sort_unstable();
        locks.dedup();
        let weight = locks
            .iter()
            .map(|t| table_bytes.get(t).copied().unwrap_or(0))
            .sum();
        let job = |sql: String, deps: Vec<usize>, mode| PostJob {
            weight,
            sql: Arc::from(sql),
            object: object_of(e),
            deps,
            locks: locks.clone(),
            mode,
        };
        match split {
            Some((build, adopt)) => {
                let build_job = jobs.len();
                jobs.push(job(build, deps, LockMode::Share));
                jobs.push(job(adopt, vec![build_job], LockMode::Exclusive));
            }
            None => {
                let mode = if e.desc == "INDEX" && own.len() == 1 {
                    LockMode::Share
                } else {
                    LockMode::Exclusive
                };
                jobs.push(job(e.defn.clone(), deps, mode));
            }
        }
    }
    jobs
}

/// `ALTER TABLE ONLY <table>\n    ADD CONSTRAINT <name> PRIMARY KEY|UNIQUE
/// (<cols>);` as pg_dump writes it, split into the unique index build and
/// the constraint that adopts it. `None` for any other form.
pub(super) fn split_unique_constraint(defn: &str) -> Option<(String, String)> {
    let rest = defn.trim().strip_prefix("ALTER TABLE ONLY ")?;
    let (table, rest) = rest.split_once("\n    ADD CONSTRAINT ")?;
    if !is_qualified_name(table) {
        return None;
    }
    let (name, rest) = take_ident(rest)?;
    let (kind, rest) = if let Some(r) = rest.strip_prefix(" PRIMARY KEY (") {
        ("PRIMARY KEY", r)
    } else if let Some(r) = rest.strip_prefix(" UNIQUE (") {
        ("UNIQUE", r)
    } else {
        return None;
    };
    let (columns, rest) = take_column_list(rest)?;
    if rest != ");" {
        return None;
    }
    Some((
        format!("CREATE UNIQUE INDEX {name} ON {table} USING btree ({columns});"),
        format!("ALTER TABLE ONLY {table}\n    ADD CONSTRAINT {name} {kind} USING INDEX {name};"),
    ))
}

/// A plain or double-quoted identifier at the start of `s`, and the rest.
fn take_ident(s: &str) -> Option<(&str, &str)> {
    if let Some(inner) = s.strip_prefix('"') {
        // `""` is a quote inside the name.
        let mut i = 0;
        let bytes = inner.as_bytes();
        loop {
            let q = inner[i..].find('"')? + i;
            if bytes.get(q + 1) == Some(&b'"') {
                i = q + 2;
                continue;
            }
            return Some((&s[..q + 2], &s[q + 2..]));
        }
    }
    let end = s
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$'))
        .unwrap_or(s.len());
    (end > 0 && !s.starts_with(|c: char| c.is_ascii_digit())).then(|| (&s[..end], &s[end..]))
}

/// `schema.table`, each part an identifier as pg_dump quotes it.
fn is_qualified_name(s: &str) -> bool {
    let Some((_, rest)) = take_ident(s) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix('.') else {
        return rest.is_empty();
    };
    matches!(take_ident(rest), Some((_, "")))
}

/// `col, "Col 2"` up to the closing parenthesis: the list (without it) and
/// the rest (from it). Only plain column names: an expression, an opclass
/// or a collation is not what pg_dump writes for a constraint.
fn take_column_list(s: &str) -> Option<(&str, &str)> {
    let mut rest = s;
    loop {
        let (_, after) = take_ident(rest)?;
        if let Some(more) = after.strip_prefix(", ") {
            rest = more;
            continue;
        }
        if after.starts_with(')') {
            let len = s.len() - after.len();
            return Some((&s[..len], after));
        }
        return None;
    }
}

/// Which tables the running jobs hold, and how.
#[derive(Debug, Default)]
pub(super) struct HeldLocks {
    /// Table -> running share jobs on it, or `None` when held exclusively.
    held: HashMap<i32, Option<u32>>,
}

impl HeldLocks {
    /// Whether `job` may start now.
    pub fn admits(&self, job: &PostJob) -> bool {
        job.locks.iter().all(|t| {
            matches!(
                (self.held.get(t), job.mode),
                (None, _) | (Some(Some(_)), LockMode::Share)
            )
        })
    }

    pub fn take(&mut self, job: &PostJob) {
        for t in &job.locks {
            match job.mode {
                LockMode::Exclusive => {
                    self.held.insert(*t, None);
                }
                LockMode::Share => {
                    let n = self.held.entry(*t).or_insert(Some(0));
                    *n = Some(n.unwrap_or(0) + 1);
                }
            }
        }
    }

    pub fn release(&mut self, job: &PostJob) {
        for t in &job.locks {
            match self.held.get(t).copied() {
                Some(Some(n)) if n > 1 => {
                    self.held.insert(*t, Some(n - 1));
                }
                _ => {
                    self.held.remove(t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::postgres::archive::{DataOffset, Section};

    #[test]
    fn pg_dumps_plain_unique_constraints_are_split() {
        let (build, attach) = split_unique_constraint(
            "ALTER TABLE ONLY public.events\n    ADD CONSTRAINT events_pkey PRIMARY KEY (id);\n",
        )
        .expect("split");
        assert_eq!(
            build,
            "CREATE UNIQUE INDEX events_pkey ON public.events USING btree (id);"
        );
        assert_eq!(
            attach,
            "ALTER TABLE ONLY public.events\n    ADD CONSTRAINT events_pkey PRIMARY KEY USING INDEX events_pkey;"
        );
        let (build, attach) = split_unique_constraint(
            "ALTER TABLE ONLY \"Ops\".\"Audit Log\"\n    ADD CONSTRAINT \"Audit \"\"x\"\" (u)\" UNIQUE (\"When\", amount);",
        )
        .expect("split quoted names");
        assert_eq!(
            build,
            "CREATE UNIQUE INDEX \"Audit \"\"x\"\" (u)\" ON \"Ops\".\"Audit Log\" USING btree (\"When\", amount);"
        );
        assert!(attach.ends_with("UNIQUE USING INDEX \"Audit \"\"x\"\" (u)\";"));
    }

    #[test]
    fn other_constraint_forms_run_as_written() {
        for defn in [
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_u UNIQUE (a) INCLUDE (b);",
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_u UNIQUE NULLS NOT DISTINCT (a);",
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pk PRIMARY KEY (a) WITH (fillfactor='50');",
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_u UNIQUE (a) DEFERRABLE;",
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_x EXCLUDE USING gist (a WITH &&);",
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_c CHECK ((a > 0));",
            "ALTER TABLE public.t\n    ADD CONSTRAINT t_pk PRIMARY KEY (a);",
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pk PRIMARY KEY (lower(a));",
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pk PRIMARY KEY (a);\nSELECT 1;",
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT \"unterminated PRIMARY KEY (a);",
        ] {
            assert_eq!(split_unique_constraint(defn), None, "{defn}");
        }
    }

    fn entry(dump_id: i32, desc: &str, defn: &str, deps: &[i32]) -> TocEntry {
        TocEntry {
            dump_id,
            had_dumper: false,
            tag: format!("e{dump_id}"),
            desc: desc.into(),
            section: Section::PostData,
            defn: defn.into(),
            copy_stmt: None,
            namespace: Some("public".into()),
            table_am: None,
            owner: None,
            dependencies: deps.to_vec(),
            data_offset: DataOffset::NoData,
        }
    }

    #[test]
    fn index_builds_share_a_table_and_constraints_have_it_alone() {
        let mut toc = vec![
            entry(
                1,
                "TABLE",
                "CREATE TABLE public.big (id bigint NOT NULL, at int);",
                &[],
            ),
            entry(
                2,
                "TABLE",
                "CREATE TABLE public.p (id int) PARTITION BY RANGE (id);",
                &[],
            ),
            entry(
                3,
                "CONSTRAINT",
                "ALTER TABLE ONLY public.big\n    ADD CONSTRAINT big_pkey PRIMARY KEY (id);",
                &[1],
            ),
            entry(
                4,
                "INDEX",
                "CREATE INDEX big_at ON public.big USING btree (at);",
                &[1],
            ),
            entry(
                5,
                "FK CONSTRAINT",
                "ALTER TABLE ONLY public.big\n    ADD CONSTRAINT big_fk FOREIGN KEY (at) REFERENCES public.big(id);",
                &[1, 3],
            ),
            entry(
                6,
                "CONSTRAINT",
                "ALTER TABLE ONLY public.p\n    ADD CONSTRAINT p_pkey PRIMARY KEY (id);",
                &[2],
            ),
        ];
        toc.push(entry(7, "TABLE DATA", "", &[1]));
        toc.push(entry(8, "TABLE DATA", "", &[2]));
        let post: Vec<&TocEntry> = toc
            .iter()
            .filter(|e| !e.desc.starts_with("TABLE"))
            .collect();
        let data_sizes = HashMap::from([(7, 1000), (8, 10)]);
        let jobs = plan(&toc, &post, &data_sizes, |e| e.tag.clone());
        let sqls: Vec<&str> = jobs.iter().map(|j| &*j.sql).collect();
        assert_eq!(jobs.len(), 5, "{sqls:#?}");
        // The primary key of an ordinary table: a shared build, then the
        // exclusive adoption, which the foreign key waits for.
        assert!(sqls[0].starts_with("CREATE UNIQUE INDEX big_pkey"));
        assert_eq!(
            (jobs[0].mode, jobs[1].mode),
            (LockMode::Share, LockMode::Exclusive)
        );
        assert_eq!(jobs[1].deps, vec![0]);
        assert_eq!((jobs[2].mode, &jobs[2].locks), (LockMode::Share, &vec![1]));
        assert_eq!(jobs[3].deps, vec![1]);
        assert_eq!(jobs[3].mode, LockMode::Exclusive);
        assert_eq!(jobs[3].weight, 1000);
        // A partitioned table's primary key runs as written.
        assert!(sqls[4].contains("PRIMARY KEY (id);"));
        assert_eq!(jobs[4].mode, LockMode::Exclusive);

        let mut held = HeldLocks::default();
        held.take(&jobs[0]);
        assert!(held.admits(&jobs[2]), "two index builds on one table");
        held.take(&jobs[2]);
        assert!(!held.admits(&jobs[1]), "the adoption waits for the builds");
        held.release(&jobs[0]);
        assert!(!held.admits(&jobs[1]), "one build still runs");
        held.release(&jobs[2]);
        assert!(held.admits(&jobs[1]));
        held.take(&jobs[1]);
        assert!(!held.admits(&jobs[2]), "nothing beside an exclusive job");
        assert!(held.admits(&jobs[4]), "other tables are free");
        held.release(&jobs[1]);
        assert!(held.admits(&jobs[3]));
    }
}
