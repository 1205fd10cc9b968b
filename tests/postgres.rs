//! PostgreSQL groundwork against the real server (the machine's, on
//! 127.0.0.1:5432, or `PGHOST`/`PGPORT`/`PGUSER`): real `pg_dump -Fc`
//! archives, with the content that breaks naive restorers, read by drhost's
//! native custom-format reader and compared with what the server itself
//! says the tables hold. Fails (never skips) when the server or the client
//! tools are missing, saying what to install or start.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use drhost::capability::postgres::archive::{
    BackupFormat, Compression, CustomArchive, Section, sniff, strip_copy_terminator,
};
use drhost::capability::postgres::restore::Config;

fn pg_env(cmd: &mut Command) -> &mut Command {
    let host = std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
    let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
    cmd.env("PGHOST", host).env("PGUSER", user)
}

fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let out = pg_env(&mut Command::new(program))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e}; install the PostgreSQL client tools (Debian: postgresql-client)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n(is PostgreSQL running on 127.0.0.1:5432 with trust auth? `.ci/run` starts it; or set PGHOST/PGPORT/PGUSER)",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn psql(db: &str, sql: &str) -> Vec<u8> {
    run(
        "psql",
        &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
    )
}

/// Connection settings for the maintenance database, from PGHOST/PGUSER/PGPORT.
fn admin() -> Config {
    let host = std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
    let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
    let mut c = Config::new();
    c.host(&host).user(&user).dbname("postgres");
    if let Ok(port) = std::env::var("PGPORT") {
        c.port(port.parse().expect("PGPORT is a number"));
    }
    c
}

/// A throwaway database, dropped on drop.
struct Db(String);
impl Drop for Db {
    fn drop(&mut self) {
        let _ = pg_env(&mut Command::new("psql"))
            .args([
                "-X",
                "-q",
                "-d",
                "postgres",
                "-c",
                &format!("DROP DATABASE IF EXISTS \"{}\"", self.0),
            ])
            .output();
    }
}

const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('ok', 'degraded', 'down');
CREATE TABLE "Candidates" (
    id bigserial PRIMARY KEY,
    "Full Name" text NOT NULL,
    bio text,
    doc jsonb,
    photo bytea,
    tags text[],
    state mood DEFAULT 'ok',
    name_len int GENERATED ALWAYS AS (length("Full Name")) STORED
);
CREATE TABLE screenings (
    id serial PRIMARY KEY,
    candidate_id bigint REFERENCES "Candidates"(id),
    score numeric(5,2)
);
CREATE INDEX screenings_score ON screenings (score);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  -- a ; and a \. and $$ inside the body
  NEW.score := coalesce(NEW.score, 0);
  RETURN NEW;
END;
$fn$;
CREATE TRIGGER screenings_touch BEFORE INSERT ON screenings FOR EACH ROW EXECUTE FUNCTION touch();
CREATE VIEW top AS SELECT * FROM screenings WHERE score > 50;
COMMENT ON TABLE "Candidates" IS 'people; with a ; and ''quotes''';
INSERT INTO "Candidates" ("Full Name", bio, doc, photo, tags, state) VALUES
  ('Zoë Ångström', E'tabs\there\nnewline and a backslash \\ and \\. at line start:\n\\.', '{"k": "v;\u00e9"}', '\x00ff10', ARRAY['a,b', 'c"d'], 'degraded'),
  ('O''Brien', NULL, NULL, NULL, '{}', 'down');
INSERT INTO screenings (candidate_id, score) SELECT 1 + (g % 2), (g % 1000) + 0.25 FROM generate_series(1, 5000) g;
"#;

fn dump(db: &str, dir: &Path, name: &str, extra: &[&str]) -> Vec<u8> {
    let path = dir.join(name);
    let mut args = vec!["-Fc", "-d", db, "-f", path.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    run("pg_dump", &args);
    std::fs::read(&path).expect("read dump")
}

#[test]
fn real_custom_archives_are_read_natively_and_match_the_server() {
    let name = format!("drhost_archive_{}", std::process::id());
    psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    let db = Db(name);
    psql(&db.0, SCHEMA);
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("gzip.dump", vec![], Compression::Gzip),
        ("plain.dump", vec!["-Z", "0"], Compression::None),
    ];
    for (file, extra, compression) in cases {
        let bytes = dump(&db.0, dir.path(), file, &extra);
        assert_eq!(sniff(&bytes[..16]), BackupFormat::Custom);
        let mut archive = CustomArchive::open(&bytes[..]).expect("open a real archive");
        assert_eq!(archive.header().compression, compression, "{file}");
        assert_eq!(archive.header().database, db.0);
        let descs: Vec<&str> = archive.toc().iter().map(|e| e.desc.as_str()).collect();
        for want in [
            "TYPE",
            "TABLE",
            "FUNCTION",
            "TRIGGER",
            "VIEW",
            "INDEX",
            "FK CONSTRAINT",
            "COMMENT",
            "SEQUENCE SET",
            "TABLE DATA",
        ] {
            assert!(
                descs.contains(&want),
                "{file}: no {want} entry in {descs:?}"
            );
        }
        let func = archive
            .toc()
            .iter()
            .find(|e| e.desc == "FUNCTION")
            .expect("function");
        assert!(
            func.defn.contains("$$ inside the body") && func.defn.contains("\\."),
            "{}",
            func.defn
        );
        let index = archive
            .toc()
            .iter()
            .find(|e| e.desc == "INDEX")
            .expect("index");
        assert_eq!(index.section, Section::PostData);
        assert!(!index.dependencies.is_empty());

        let mut tables = Vec::new();
        while let Some(mut block) = archive.next_block().expect("block") {
            let mut text = Vec::new();
            block.read_to_end(&mut text).expect("read block");
            tables.push((block.dump_id, text));
        }
        assert_eq!(tables.len(), 2, "{file}: one data block per table");
        for (id, text) in tables {
            let entry = archive.entry(id).expect("entry").clone();
            assert_eq!(entry.desc, "TABLE DATA");
            let copy = entry.copy_stmt.expect("COPY statement");
            assert!(
                copy.starts_with("COPY public.") && copy.trim_end().ends_with("FROM stdin;"),
                "{copy}"
            );
            // What the server says the table holds, in the same COPY text format.
            let table = format!(
                "public.{}",
                if entry.tag == "Candidates" {
                    "\"Candidates\"".to_owned()
                } else {
                    entry.tag.clone()
                }
            );
            let cols = &copy[copy.find('(').expect("columns")..=copy.find(')').expect("columns")];
            let expected = psql(&db.0, &format!("COPY {table} {cols} TO STDOUT"));
            assert_eq!(
                String::from_utf8_lossy(strip_copy_terminator(&text)),
                String::from_utf8_lossy(&expected),
                "{file}: data of {} differs from the server's",
                entry.tag
            );
        }
    }
}

#[test]
fn a_truncated_real_archive_names_what_is_missing() {
    let name = format!("drhost_archive_trunc_{}", std::process::id());
    psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    let db = Db(name);
    psql(&db.0, SCHEMA);
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = dump(&db.0, dir.path(), "t.dump", &[]);
    let cut = &bytes[..bytes.len() * 2 / 3];
    let result = (|| -> Result<(), String> {
        let mut a = CustomArchive::open(cut).map_err(|e| e.to_string())?;
        while let Some(mut b) = a.next_block().map_err(|e| e.to_string())? {
            let mut sink = Vec::new();
            b.read_to_end(&mut sink).map_err(|e| e.to_string())?;
        }
        Ok(())
    })();
    let err = result.expect_err("a truncated archive must not read cleanly");
    assert!(err.contains("truncated") || err.contains("ends"), "{err}");
}

mod restore {
    //! The custom-archive restore against the real server: new database,
    //! swap, the previous one kept; failures leave the original intact.

    use super::*;
    use drhost::capability::postgres::restore::{RestoreError, RestoreOptions, restore_custom};

    fn databases_like(prefix: &str) -> Vec<String> {
        let out = psql(
            "postgres",
            &format!(
                "COPY (SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%' ORDER BY 1) TO STDOUT"
            ),
        );
        String::from_utf8_lossy(&out)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Schema without pg_dump's random \restrict keys.
    fn schema(db: &str) -> String {
        let out = run("pg_dump", &["-s", "--no-owner", "-d", db]);
        String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn data(db: &str) -> Vec<String> {
        ["public.\"Candidates\"", "public.screenings"]
            .iter()
            .map(|t| {
                String::from_utf8_lossy(&psql(
                    db,
                    &format!("COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT"),
                ))
                .into_owned()
            })
            .chain(std::iter::once(
                String::from_utf8_lossy(&psql(
                    db,
                    "COPY (SELECT last_value FROM public.screenings_id_seq) TO STDOUT",
                ))
                .into_owned(),
            ))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restore_swaps_in_a_faithful_copy_and_keeps_the_previous_database() {
        let pid = std::process::id();
        let source = Db(format!("drhost_rs_src_{pid}"));
        psql("postgres", &format!("CREATE DATABASE \"{}\"", source.0));
        psql(&source.0, SCHEMA);
        let target = Db(format!("drhost_rs_tgt_{pid}"));
        psql("postgres", &format!("CREATE DATABASE \"{}\"", target.0));
        psql(
            &target.0,
            "CREATE TABLE corrupted (x int); INSERT INTO corrupted VALUES (42);",
        );
        let kept = Db(format!("{}_before_r1", target.0));
        let _partial = Db(format!("{}_restore_r1", target.0));

        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = dump(&source.0, dir.path(), "src.dump", &[]);
        let options = RestoreOptions {
            admin: admin(),
            database: target.0.clone(),
            run_id: "r1".into(),
            keep_previous: true,
        };
        let outcome = restore_custom(&options, std::io::Cursor::new(bytes))
            .await
            .expect("restore");
        assert_eq!(outcome.kept_as.as_deref(), Some(kept.0.as_str()));
        assert_eq!((outcome.tables, outcome.rows), (2, 5002));
        assert_eq!(
            schema(&target.0),
            schema(&source.0),
            "restored schema differs"
        );
        assert_eq!(data(&target.0), data(&source.0), "restored data differs");
        // The previous database is kept for forensics, untouched.
        assert_eq!(
            String::from_utf8_lossy(&psql(&kept.0, "COPY corrupted TO STDOUT")),
            "42\n"
        );
        assert!(databases_like(&format!("{}_restore", target.0)).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_backup_leaves_the_original_untouched_and_no_partial_database() {
        let pid = std::process::id();
        let source = Db(format!("drhost_rc_src_{pid}"));
        psql("postgres", &format!("CREATE DATABASE \"{}\"", source.0));
        psql(&source.0, SCHEMA);
        let target = Db(format!("drhost_rc_tgt_{pid}"));
        psql("postgres", &format!("CREATE DATABASE \"{}\"", target.0));
        psql(
            &target.0,
            "CREATE TABLE precious (x int); INSERT INTO precious VALUES (7);",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = dump(&source.0, dir.path(), "src.dump", &[]);
        let truncated = bytes[..bytes.len() - 200].to_vec();
        let options = RestoreOptions {
            admin: admin(),
            database: target.0.clone(),
            run_id: "r2".into(),
            keep_previous: true,
        };
        let err = restore_custom(&options, std::io::Cursor::new(truncated))
            .await
            .expect_err("must fail");
        assert!(
            matches!(err, RestoreError::Archive(_) | RestoreError::Verify(_)),
            "{err}"
        );
        assert_eq!(
            String::from_utf8_lossy(&psql(&target.0, "COPY precious TO STDOUT")),
            "7\n"
        );
        // The partial database is dropped (asynchronously, on a new connection).
        let partial = format!("{}_restore_r2", target.0);
        let mut left = databases_like(&partial);
        for _ in 0..50 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            left = databases_like(&partial);
        }
        assert!(left.is_empty(), "partial database left behind: {left:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_restore_of_the_same_database_is_refused() {
        let name = format!("drhost_rl_tgt_{}", std::process::id());
        // Hold the lock from another session, as a running restore would.
        let holder = pg_env(&mut Command::new("psql"))
            .args(["-X", "-q", "-d", "postgres", "-c"])
            .arg(format!(
                "SELECT pg_advisory_lock(hashtext('drhost-restore:{name}')); SELECT pg_sleep(3);"
            ))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("psql");
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        let options = RestoreOptions {
            admin: admin(),
            database: name.clone(),
            run_id: "r3".into(),
            keep_previous: true,
        };
        let err = restore_custom(&options, std::io::Cursor::new(Vec::new()))
            .await
            .expect_err("refused");
        let mut holder = holder;
        let _ = holder.wait();
        assert!(
            matches!(err, RestoreError::Busy(ref db) if *db == name),
            "{err}"
        );
        assert!(databases_like(&format!("{name}_restore")).is_empty());
    }
}

mod checks {
    //! Integrity checks, read-only queries and session termination against
    //! the real server.

    use std::time::Duration;

    use super::*;
    use drhost::bindings::CapError;
    use drhost::capability::postgres::checks::{
        QueryLimits, Validation, integrity_check, query_read_only, terminate_connections,
    };

    fn fresh(tag: &str) -> Db {
        let db = Db(format!("drhost_ck_{tag}_{}", std::process::id()));
        psql("postgres", &format!("CREATE DATABASE \"{}\"", db.0));
        psql(
            &db.0,
            "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE INDEX t_v ON t (v); INSERT INTO t SELECT g, g::text FROM generate_series(1, 100) g;",
        );
        db
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn integrity_check_runs_amcheck_when_installed_and_validations() {
        let db = fresh("ic");
        let validations = vec![
            Validation {
                name: "t has rows".into(),
                sql: "SELECT count(*) FROM t".into(),
            },
            Validation {
                name: "no orphans".into(),
                sql: "SELECT NOT exists(SELECT 1 FROM t WHERE v IS NULL)".into(),
            },
            Validation {
                name: "deliberately false".into(),
                sql: "SELECT false".into(),
            },
        ];
        let report = integrity_check(&admin(), &db.0, &validations, QueryLimits::default())
            .await
            .expect("check");
        let by_name = |n: &str| {
            report
                .checks
                .iter()
                .find(|c| c.name == n)
                .cloned()
                .expect(n)
        };
        assert!(by_name("connectivity").ok);
        assert!(
            by_name("amcheck").detail.contains("not run"),
            "{:?}",
            by_name("amcheck")
        );
        assert_eq!(
            (
                by_name("t has rows").ok,
                by_name("t has rows").detail.as_str()
            ),
            (true, "100")
        );
        assert!(by_name("no orphans").ok);
        assert!(!by_name("deliberately false").ok);
        assert!(!report.healthy);

        psql(&db.0, "CREATE EXTENSION amcheck");
        let report = integrity_check(&admin(), &db.0, &validations[..2], QueryLimits::default())
            .await
            .expect("check");
        let amcheck = report
            .checks
            .iter()
            .find(|c| c.name == "amcheck")
            .expect("amcheck");
        assert!(
            amcheck.ok
                && amcheck
                    .detail
                    .contains("B-tree indexes checked, all intact"),
            "{amcheck:?}"
        );
        assert!(report.healthy);

        let err = integrity_check(&admin(), "drhost_no_such_db", &[], QueryLimits::default())
            .await
            .expect_err("missing");
        assert!(matches!(err, CapError::NotFound(_)), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_are_single_read_only_bounded_statements() {
        let db = fresh("q");
        let limits = QueryLimits::default();
        let rows = query_read_only(
            &admin(),
            &db.0,
            "SELECT id, v, NULL FROM t WHERE id <= 2 ORDER BY id",
            limits,
        )
        .await
        .expect("query");
        assert_eq!(
            rows,
            vec![
                vec!["1".to_owned(), "1".into(), String::new()],
                vec!["2".into(), "2".into(), String::new()]
            ]
        );
        let err = query_read_only(&admin(), &db.0, "SELECT 1; DROP TABLE t", limits)
            .await
            .expect_err("two statements");
        assert!(matches!(err, CapError::Invalid(_)), "{err}");
        let err = query_read_only(&admin(), &db.0, "DELETE FROM t", limits)
            .await
            .expect_err("a write");
        assert!(
            matches!(err, CapError::Failed(ref m) if m.contains("read-only")),
            "{err}"
        );
        let small = QueryLimits {
            max_rows: 10,
            ..limits
        };
        let err = query_read_only(&admin(), &db.0, "SELECT * FROM t", small)
            .await
            .expect_err("too many rows");
        assert!(
            matches!(err, CapError::Invalid(ref m) if m.contains("10 rows")),
            "{err}"
        );
        let quick = QueryLimits {
            timeout: Duration::from_millis(200),
            ..limits
        };
        let err = query_read_only(&admin(), &db.0, "SELECT pg_sleep(5)", quick)
            .await
            .expect_err("timeout");
        assert!(matches!(err, CapError::TimedOut(_)), "{err}");
        // Nothing was changed by any of it.
        assert_eq!(
            String::from_utf8_lossy(&psql(&db.0, "COPY (SELECT count(*) FROM t) TO STDOUT")),
            "100\n"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn terminate_connections_ends_other_sessions() {
        let db = fresh("tc");
        let mut sleeper = pg_env(&mut Command::new("psql"))
            .args(["-X", "-q", "-d", &db.0, "-c", "SELECT pg_sleep(30)"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("psql");
        let mut n = 0;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            n = terminate_connections(&admin(), &db.0)
                .await
                .expect("terminate");
            if n > 0 {
                break;
            }
        }
        assert!(n >= 1, "the sleeping session was not seen");
        let status = sleeper.wait().expect("psql exits");
        assert!(!status.success(), "the terminated psql must fail");
    }
}
