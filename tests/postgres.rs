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
use drhost_tests::pg::{self, env as pg_env, psql, run};

/// Connection settings for the maintenance database, from PGHOST/PGUSER/PGPORT.
fn admin() -> Config {
    let mut c = Config::new();
    c.host(pg::host()).user(pg::user()).dbname("postgres");
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

/// `bytes`, gzip-compressed (as the runbook's `backup_latest.dump.gz`).
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
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
    //! The restore against the real server, from every supported backup
    //! format, over 2 load connections: new database, swap, the previous
    //! one kept; the result compared with the source (schema dump and
    //! per-table checksums); failures leave the original intact.

    use super::*;
    use drhost::capability::postgres::checks::Validation;
    use std::sync::Arc;

    use drhost::capability::postgres::restore::{
        RestoreError, RestoreOptions, restore, restore_ranged,
    };
    use drhost::capability::postgres::source::RangeRead;

    /// A backup in memory, readable at any offset.
    struct InMemory(Vec<u8>);
    impl RangeRead for InMemory {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn open(
            &self,
            range: std::ops::Range<u64>,
        ) -> std::io::Result<Box<dyn std::io::Read + Send>> {
            let bytes = self.0[range.start as usize..range.end as usize].to_vec();
            Ok(Box::new(std::io::Cursor::new(bytes)))
        }
    }

    /// What breaks naive restorers, on top of [`SCHEMA`]: a partitioned
    /// table (with a unique constraint, which its partitions inherit),
    /// unique constraints with quoted names and with INCLUDE columns, a standalone sequence with a set value, a one-column table
    /// with empty strings (empty COPY lines), quoted mixed-case names in a
    /// second schema, a view over a join, comments, and a table big enough
    /// (several MiB of COPY text) to be split across load connections.
    const TORTURE: &str = r#"
CREATE SCHEMA "Ops";
CREATE TABLE "Ops"."Audit Log" ("When" timestamptz NOT NULL, "What" text, amount numeric(12,2), PRIMARY KEY ("When", "What"));
CREATE SEQUENCE "Ops".ticket_seq START 1000 INCREMENT 7;
SELECT setval('"Ops".ticket_seq', 4242, true);
CREATE TABLE measurements (city int NOT NULL, logdate date NOT NULL, peak int) PARTITION BY RANGE (logdate);
CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE INDEX measurements_city ON measurements (city);
CREATE TABLE blanks (v text);
INSERT INTO blanks VALUES (''), (''), (NULL), ('\.'), (E'\\.');
CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, kind text NOT NULL, payload jsonb, note text);
CREATE INDEX events_kind_at ON events (kind, at);
ALTER TABLE screenings ADD CONSTRAINT score_range CHECK (score >= 0);
ALTER TABLE "Ops"."Audit Log" ADD CONSTRAINT "Audit ""When"" (unique)" UNIQUE (amount, "When");
ALTER TABLE measurements ADD CONSTRAINT measurements_peak UNIQUE (logdate, peak);
ALTER TABLE events ADD CONSTRAINT events_kind_id UNIQUE (kind, id) INCLUDE (at);
CREATE VIEW "Ops"."Candidate Scores" AS SELECT c."Full Name", s.score FROM "Candidates" c JOIN screenings s ON s.candidate_id = c.id;
COMMENT ON COLUMN "Ops"."Audit Log"."What" IS 'what happened; "quoted" and $$dollars$$';
INSERT INTO "Ops"."Audit Log" SELECT timestamptz '2026-01-01' + g * interval '1 minute', 'event ' || g || E'\twith tab', g * 1.5 FROM generate_series(1, 2000) g;
INSERT INTO measurements SELECT g % 50, date '2025-06-01' + (g % 400), g FROM generate_series(1, 20000) g;
INSERT INTO events SELECT g, timestamptz '2026-01-01' + g * interval '1 second', (ARRAY['login','logout','error'])[1 + g % 3],
  jsonb_build_object('n', g, 's', repeat('x', g % 40)), CASE WHEN g % 7 = 0 THEN NULL ELSE 'note ' || md5(g::text) || E'\n' || 'line two \\ backslash' END
  FROM generate_series(1, 60000) g;
"#;

    /// Rows in SCHEMA + TORTURE.
    const ROWS: u64 = 2 + 5000 + 2000 + 20000 + 5 + 60000;

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

    async fn no_database_like(prefix: &str) -> Vec<String> {
        let mut left = databases_like(prefix);
        for _ in 0..100 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            left = databases_like(prefix);
        }
        left
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

    /// Per table: row count and an order-independent checksum of its rows;
    /// per sequence: its state. (Parallel loading changes the physical row
    /// order, never the content.)
    fn content(db: &str) -> String {
        let sql = r#"
CREATE TEMP TABLE sums (obj text, n bigint, h text);
DO $do$
DECLARE r record; c bigint; h text; lv bigint; called bool;
BEGIN
  FOR r IN SELECT format('%I.%I', schemaname, tablename) AS t FROM pg_tables
           WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND schemaname NOT LIKE 'pg_temp%' LOOP
    EXECUTE format($q$SELECT count(*), md5(coalesce(string_agg(x::text, E'\n' ORDER BY x::text), '')) FROM %s x$q$, r.t) INTO c, h;
    INSERT INTO sums VALUES (r.t, c, h);
  END LOOP;
  FOR r IN SELECT format('%I.%I', schemaname, sequencename) AS s FROM pg_sequences LOOP
    EXECUTE format('SELECT last_value, is_called FROM %s', r.s) INTO lv, called;
    INSERT INTO sums VALUES (r.s, lv, called::text);
  END LOOP;
END $do$;
COPY (SELECT * FROM sums ORDER BY obj) TO STDOUT;
"#;
        String::from_utf8_lossy(&psql(db, sql)).into_owned()
    }

    fn options(target: &str, run: &str) -> RestoreOptions {
        let mut o = RestoreOptions::new(admin(), target, run);
        o.jobs = 2;
        o
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_format_restores_a_faithful_copy_and_keeps_the_previous_database() {
        let pid = std::process::id();
        let source = Db(format!("drhost_rs_src_{pid}"));
        psql("postgres", &format!("CREATE DATABASE \"{}\"", source.0));
        psql(&source.0, SCHEMA);
        psql(&source.0, TORTURE);
        let dir = tempfile::tempdir().expect("tempdir");
        let custom = dump(&source.0, dir.path(), "src.dump", &[]);
        let plain = {
            let path = dir.path().join("src.sql");
            run(
                "pg_dump",
                &["-Fp", "-d", &source.0, "-f", path.to_str().expect("utf-8")],
            );
            std::fs::read(&path).expect("read plain dump")
        };
        assert!(
            String::from_utf8_lossy(&plain).contains("ALTER TABLE public.events OWNER TO"),
            "the plain dump should carry owners (no-owner is exercised)"
        );
        let want_schema = schema(&source.0);
        let want_content = content(&source.0);
        assert!(
            want_content.contains("public.events\t60000"),
            "{want_content}"
        );

        let formats: [(&str, Vec<u8>, &str); 6] = [
            ("custom", custom.clone(), "custom"),
            ("custom.gz", gzip(&custom), "custom"),
            ("plain", plain.clone(), "plain"),
            ("plain.gz", gzip(&plain), "plain"),
            // Random access: the tables are read at their TOC offsets.
            ("custom, ranged", custom.clone(), "custom"),
            // Random access to a gzipped archive: read front to back.
            ("custom.gz, ranged", gzip(&custom), "custom"),
        ];
        for (i, (name, bytes, format)) in formats.into_iter().enumerate() {
            let ranged = name.ends_with("ranged");
            let target = Db(format!("drhost_rs_tgt_{pid}_{i}"));
            psql("postgres", &format!("CREATE DATABASE \"{}\"", target.0));
            psql(
                &target.0,
                "CREATE TABLE corrupted (x int); INSERT INTO corrupted VALUES (42);",
            );
            let kept = Db(format!("{}_before_r{i}", target.0));
            let _partial = Db(format!("{}_restore_r{i}", target.0));
            let mut o = options(&target.0, &format!("r{i}"));
            o.validations = vec![Validation {
                name: "events loaded".into(),
                sql: "SELECT count(*) FROM events".into(),
            }];
            let outcome = if ranged {
                restore_ranged(&o, Arc::new(InMemory(bytes))).await
            } else {
                restore(&o, std::io::Cursor::new(bytes)).await
            }
            .unwrap_or_else(|e| panic!("restore from {name}: {e}"));
            assert_eq!(outcome.format, format, "{name}");
            assert_eq!(outcome.ranged, name == "custom, ranged", "{name}");
            assert_eq!(outcome.jobs, 2);
            assert_eq!(outcome.kept_as.as_deref(), Some(kept.0.as_str()), "{name}");
            assert_eq!(outcome.rows, ROWS, "{name}");
            assert!(
                outcome.data_bytes > 4 << 20,
                "{name}: {}",
                outcome.data_bytes
            );
            assert_eq!(
                schema(&target.0),
                want_schema,
                "{name}: restored schema differs"
            );
            assert_eq!(
                content(&target.0),
                want_content,
                "{name}: restored data differs"
            );
            // The previous database is kept for forensics, untouched.
            assert_eq!(
                String::from_utf8_lossy(&psql(&kept.0, "COPY corrupted TO STDOUT")),
                "42\n"
            );
            assert!(databases_like(&format!("{}_restore", target.0)).is_empty());
        }
    }

    /// Restores `bytes` over a database holding a `precious` row, read front
    /// to back and then at random (as from S3), expects both to fail, and
    /// checks the original is intact and no partial database is left each
    /// time. Returns the two errors' messages joined, and the first error.
    async fn fails_cleanly(tag: &str, bytes: Vec<u8>) -> RestoreError {
        let target = Db(format!("drhost_rf_{tag}_{}", std::process::id()));
        psql("postgres", &format!("CREATE DATABASE \"{}\"", target.0));
        psql(
            &target.0,
            "CREATE TABLE precious (x int); INSERT INTO precious VALUES (7);",
        );
        let streamed = restore(
            &options(&target.0, "rf"),
            std::io::Cursor::new(bytes.clone()),
        )
        .await
        .expect_err("must fail");
        let ranged = restore_ranged(&options(&target.0, "rg"), Arc::new(InMemory(bytes)))
            .await
            .expect_err("must fail when read at random too");
        for (err, run) in [(&streamed, "rf"), (&ranged, "rg")] {
            assert_eq!(
                String::from_utf8_lossy(&psql(&target.0, "COPY precious TO STDOUT")),
                "7\n",
                "the original must be intact after: {err}"
            );
            let left = no_database_like(&format!("{}_restore_{run}", target.0)).await;
            assert!(left.is_empty(), "partial database left behind after: {err}");
        }
        assert_eq!(
            std::mem::discriminant(&streamed),
            std::mem::discriminant(&ranged),
            "same kind of error either way: {streamed} / {ranged}"
        );
        streamed
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_truncated_or_foreign_backups_leave_the_original_untouched() {
        let pid = std::process::id();
        let source = Db(format!("drhost_rc_src_{pid}"));
        psql("postgres", &format!("CREATE DATABASE \"{}\"", source.0));
        psql(&source.0, SCHEMA);
        psql(&source.0, TORTURE);
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = dump(&source.0, dir.path(), "src.dump", &[]);

        let err = fails_cleanly("trunc", bytes[..bytes.len() * 2 / 3].to_vec()).await;
        assert!(matches!(err, RestoreError::Source(_)), "{err}");

        let mut flipped = bytes.clone();
        let at = flipped.len() / 2;
        for b in &mut flipped[at..at + 64] {
            *b ^= 0x5a;
        }
        let err = fails_cleanly("flip", flipped).await;
        assert!(
            matches!(err, RestoreError::Source(_) | RestoreError::Sql { .. }),
            "{err}"
        );

        let gz = gzip(&bytes);
        let err = fails_cleanly("gztrunc", gz[..gz.len() / 2].to_vec()).await;
        assert!(matches!(err, RestoreError::Source(_)), "{err}");

        let err = fails_cleanly("png", b"\x89PNG\r\n\x1a\n0000000000000".to_vec()).await;
        assert!(
            err.to_string().contains("not a pg_dump custom archive"),
            "{err}"
        );

        let err = fails_cleanly(
            "connect",
            b"CREATE TABLE a (x int);\n\\connect other\nCREATE TABLE b (x int);\n".to_vec(),
        )
        .await;
        assert!(err.to_string().contains("pg_dump -C"), "{err}");

        let err = fails_cleanly(
            "ext",
            b"CREATE EXTENSION IF NOT EXISTS drhost_no_such_extension;\nCREATE TABLE a (x int);\n"
                .to_vec(),
        )
        .await;
        let msg = err.to_string();
        assert!(
            msg.contains("drhost_no_such_extension")
                && msg.contains("not installed on this server"),
            "{msg}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_streaming_from_s3_resumes_dropped_connections_and_fails_cleanly_when_s3_is_gone()
     {
        use drhost::capability::object_store::s3::{S3Config, S3Store};
        use drhost::capability::postgres::live::S3Backup;
        use drhost_tests::s3_server::{Fault, FlakyProxy, S3Server};

        let pid = std::process::id();
        let source = Db(format!("drhost_rx_src_{pid}"));
        psql("postgres", &format!("CREATE DATABASE \"{}\"", source.0));
        psql(&source.0, SCHEMA);
        psql(&source.0, TORTURE);
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = dump(&source.0, dir.path(), "src.dump", &[]);
        let size = bytes.len() as u64;
        assert!(
            size > 1 << 20,
            "the dump should span several ranges: {size}"
        );
        let s3 = S3Server::start().await.expect("S3 server");
        s3.create_bucket("backups").await.expect("bucket");
        s3.put_object("backups", "db.dump", bytes)
            .await
            .expect("upload");
        let store_via = |endpoint: &str, retries: u32| {
            S3Store::new(S3Config {
                endpoint: Some(endpoint.to_owned()),
                region: Some(s3.region.clone()),
                path_style: true,
                access_key_id: Some(s3.access_key.clone()),
                secret_access_key: Some(s3.secret_key.clone()),
                range_size: 256 * 1024,
                max_in_flight: 3,
                max_retries: retries,
                ..Default::default()
            })
            .expect("S3 config")
        };

        // Three connections cut mid-body: the ranges resume, the restore
        // completes and equals the source.
        let proxy = FlakyProxy::start(
            s3.addr,
            Fault::DropAfterBytes {
                bytes: 100 * 1024,
                times: 3,
            },
        )
        .await
        .expect("proxy");
        let store = store_via(&proxy.endpoint, 5);
        let meta = store.head("backups", "db.dump").await.expect("head");
        let target = Db(format!("drhost_rx_tgt_{pid}"));
        let backup = Arc::new(S3Backup::new(store.clone(), meta.clone()));
        let outcome = restore_ranged(&options(&target.0, "rx"), backup)
            .await
            .expect("restore through a flaky connection");
        assert!(outcome.ranged, "tables read at their offsets");
        assert_eq!(outcome.read_bytes, size);
        assert_eq!(outcome.rows, ROWS);
        assert!(proxy.faults_injected() >= 1, "no connection was cut");
        assert_eq!(content(&target.0), content(&source.0));

        // S3 goes away for good mid-stream: the restore fails naming S3,
        // the database it would have replaced is intact, nothing is left.
        psql(
            &target.0,
            "CREATE TABLE precious (x int); INSERT INTO precious VALUES (7);",
        );
        let proxy = FlakyProxy::start(
            s3.addr,
            Fault::DropAfterBytes {
                bytes: 100 * 1024,
                times: 1_000_000,
            },
        )
        .await
        .expect("proxy");
        let store = store_via(&proxy.endpoint, 1);
        let reader = store
            .open_stream(&meta)
            .into_blocking_reader(tokio::runtime::Handle::current());
        let err = restore(&options(&target.0, "ry"), reader)
            .await
            .expect_err("S3 is gone");
        assert!(matches!(err, RestoreError::Source(_)), "{err}");
        assert!(err.to_string().contains("S3"), "{err}");
        assert_eq!(
            String::from_utf8_lossy(&psql(&target.0, "COPY precious TO STDOUT")),
            "7\n"
        );
        let left = no_database_like(&format!("{}_restore_ry", target.0)).await;
        assert!(left.is_empty(), "partial database left behind: {left:?}");
        let _kept = Db(format!("{}_before_rx", target.0));
    }

    /// A stalled download: nothing for 5 s (longer than the restore is
    /// given), then an error. (Not forever: the test's runtime waits for
    /// the reading thread when it shuts down.)
    struct Stall;
    impl std::io::Read for Stall {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            std::thread::sleep(std::time::Duration::from_secs(5));
            Err(std::io::Error::other("stalled"))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timeout_in_the_data_phase_drops_the_partial_database() {
        let pid = std::process::id();
        let target = Db(format!("drhost_rt_tgt_{pid}"));
        psql("postgres", &format!("CREATE DATABASE \"{}\"", target.0));
        psql(
            &target.0,
            "CREATE TABLE precious (x int); INSERT INTO precious VALUES (7);",
        );
        // A plain dump whose data stops coming after the first rows.
        let head = b"CREATE TABLE t (x int);\nCOPY public.t (x) FROM stdin;\n1\n2\n".to_vec();
        let stalled = std::io::Read::chain(std::io::Cursor::new(head), Stall);
        let options = options(&target.0, "rt");
        let result = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            restore(&options, stalled),
        )
        .await;
        assert!(result.is_err(), "the restore should still be waiting");
        let left = no_database_like(&format!("{}_restore_rt", target.0)).await;
        assert!(left.is_empty(), "partial database left behind: {left:?}");
        assert_eq!(
            String::from_utf8_lossy(&psql(&target.0, "COPY precious TO STDOUT")),
            "7\n"
        );
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
        let err = restore(&options(&name, "r3"), std::io::Cursor::new(Vec::new()))
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

mod scenario {
    //! The database-corruption plugin end to end against the real server
    //! and a real S3 server (s3s-fs, SigV4), Kubernetes, health and the
    //! status page simulated: `drhost test` with a fixture that sets
    //! `live = ["postgres", "object-store"]`.
    //!
    //! The corruption is real as far as amcheck can tell: an index built
    //! with an operator class whose comparison reads a setting, and the
    //! setting flipped on the damaged database, so the stored order breaks
    //! the B-tree invariant and `bt_index_check` reports it.

    use super::*;
    use drhost_tests::s3_server::S3Server;

    const BROKEN_ORDER: &str = r#"
CREATE EXTENSION IF NOT EXISTS amcheck;
CREATE FUNCTION flip_cmp(int4, int4) RETURNS int4 LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN current_setting('drhost.flip', true) = 'on' THEN btint4cmp($2, $1) ELSE btint4cmp($1, $2) END
$$;
CREATE OPERATOR CLASS flip_ops FOR TYPE int4 USING btree AS
  OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=, OPERATOR 5 >, FUNCTION 1 flip_cmp(int4, int4);
CREATE TABLE candidates (id int4 NOT NULL, name text);
INSERT INTO candidates SELECT g, 'candidate ' || g FROM generate_series(1, 5000) g;
CREATE INDEX candidates_id_flip ON candidates (id flip_ops);
"#;

    /// A damaged database (the same content as its backup, with a B-tree
    /// whose comparison is flipped), its backup in a real bucket, and the
    /// reference runbook pointing at both.
    pub(super) struct Scene {
        pub(super) source: Db,
        pub(super) target: Db,
        pub(super) dir: tempfile::TempDir,
        pub(super) s3: S3Server,
        pub(super) runbook_text: String,
    }

    pub(super) async fn scene(tag: &str) -> Scene {
        let pid = std::process::id();
        let source = Db(format!("drhost_{tag}_src_{pid}"));
        psql("postgres", &format!("CREATE DATABASE \"{}\"", source.0));
        psql(&source.0, SCHEMA);
        psql(&source.0, BROKEN_ORDER);
        let dir = tempfile::tempdir().expect("tempdir");
        let backup = dump(&source.0, dir.path(), "backup.dump", &[]);
        let gz = gzip(&backup);

        // The damaged database: the same content, the comparison flipped.
        let target = Db(format!("drhost_{tag}_{pid}"));
        psql("postgres", &format!("CREATE DATABASE \"{}\"", target.0));
        run(
            "pg_restore",
            &[
                "--no-owner",
                "-d",
                &target.0,
                dir.path().join("backup.dump").to_str().expect("utf-8"),
            ],
        );
        psql(
            "postgres",
            &format!("ALTER DATABASE \"{}\" SET drhost.flip = 'on'", target.0),
        );
        let check = pg_env(&mut Command::new("psql"))
            .args(["-X", "-q", "-d", &target.0, "-c"])
            .arg("SELECT bt_index_check('candidates_id_flip'::regclass)")
            .output()
            .expect("psql");
        assert!(
            !check.status.success(),
            "amcheck should find the damaged index: {}",
            String::from_utf8_lossy(&check.stdout)
        );

        let s3 = S3Server::start().await.expect("start the S3 server");
        s3.create_bucket("resume-screening-backups")
            .await
            .expect("bucket");
        s3.put_object(
            "resume-screening-backups",
            "postgres/backup_latest.dump.gz",
            gz,
        )
        .await
        .expect("upload the backup");
        let runbook_text = std::fs::read_to_string(
            drhost_tests::repo_root().join("runbooks/database-corruption.toml"),
        )
        .expect("runbook")
        .replace(
            "../plugins/target/wasm32-wasip2/release/database_corruption.wasm",
            drhost_tests::plugin("database-corruption")
                .to_str()
                .expect("utf-8"),
        )
        .replace("\"resume_screening\"", &format!("\"{}\"", target.0));
        let runbook_text = format!(
            "{runbook_text}\n[backends.postgres]\nhost = \"{}\"\nuser = \"{}\"\njobs = 2\n\n\
             [[backends.postgres.validations]]\nname = \"candidates present\"\nsql = \"SELECT count(*) FROM candidates\"\n\n\
             [backends.object_store]\nendpoint = \"{}\"\npath_style = true\n",
            pg::host(),
            pg::user(),
            s3.endpoint
        );
        Scene {
            source,
            target,
            dir,
            s3,
            runbook_text,
        }
    }

    /// The restored database is intact (amcheck passes without the flipped
    /// setting) and complete, the damaged one is kept for forensics, and the
    /// audit log verifies and records the restore's phases.
    pub(super) fn assert_recovered(target: &str, audit: &Path) {
        let kept: Vec<String> = String::from_utf8_lossy(&psql(
            "postgres",
            &format!(
                "COPY (SELECT datname FROM pg_database WHERE datname LIKE '{target}_before_%') TO STDOUT"
            ),
        ))
        .lines()
        .map(str::to_owned)
        .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        let _kept = Db(kept[0].clone());
        assert_eq!(
            String::from_utf8_lossy(&psql(
                target,
                "COPY (SELECT count(*) FROM candidates) TO STDOUT"
            )),
            "5000\n"
        );
        // Fails (and panics with the server's message) if amcheck does.
        psql(
            target,
            "SELECT bt_index_check('candidates_id_flip'::regclass)",
        );
        let log = std::fs::read_dir(audit)
            .expect("audit dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".audit.jsonl"))
            .expect("an audit log");
        let records = std::fs::read_to_string(&log).expect("audit log");
        assert!(
            records.contains("\"phases\""),
            "no phase timings in the audit"
        );
        let verify = Command::new(drhost_tests::drhost_bin())
            .args(["audit", "verify"])
            .arg(&log)
            .output()
            .expect("audit verify");
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stdout)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn database_corruption_recovers_a_real_database_from_a_real_bucket() {
        let Scene {
            source: _source,
            target,
            dir,
            s3,
            runbook_text,
        } = scene("sc").await;
        let runbook = dir.path().join("runbook.toml");
        std::fs::write(&runbook, &runbook_text).expect("write runbook");
        let fixture_text = std::fs::read_to_string(
            drhost_tests::repo_root().join("runbooks/fixtures/database-corruption/happy-path.toml"),
        )
        .expect("fixture");
        // Keep the simulated Kubernetes, health and notify; PostgreSQL and
        // the bucket are real.
        let k8s_to_health: String = fixture_text
            .split("[[object_store.objects]]")
            .next()
            .expect("fixture head")
            .lines()
            .filter(|l| !l.starts_with("runbook ="))
            .collect::<Vec<_>>()
            .join("\n");
        let fixture = dir.path().join("live.toml");
        std::fs::write(
            &fixture,
            format!(
                "live = [\"postgres\", \"object-store\"]\n{k8s_to_health}\n\n\
                 [[health.targets]]\nname = \"backend-api\"\nstatuses = [503, 200]\n\n\
                 [notify]\nchannels = [\"status-page\"]\n\n\
                 [expect]\noutcome = \"completed\"\ncalls = [\n\
                 \"postgres.integrity-check => ok\",\n\
                 \"postgres.restore key=postgres/backup_latest.dump.gz => ok\",\n\
                 \"postgres.integrity-check => ok\",\n]\n\
                 not_calls = [\"operator.confirm\"]\n"
            ),
        )
        .expect("write fixture");

        let audit = dir.path().join("audit");
        let mut cmd = Command::new(drhost_tests::drhost_bin());
        cmd.args(["test"])
            .arg(drhost_tests::plugin("database-corruption"))
            .arg("--fixture")
            .arg(&fixture)
            .arg("--runbook")
            .arg(&runbook)
            .arg("--audit-dir")
            .arg(&audit)
            .env("DRHOST_CACHE_DIR", dir.path().join("cache"))
            .stdin(std::process::Stdio::null());
        for (k, v) in s3.env() {
            cmd.env(k, v);
        }
        let out = pg_env(&mut cmd).output().expect("run drhost");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "drhost test failed:\n{text}");
        assert!(
            text.contains("corrupt"),
            "the corruption was not reported:\n{text}"
        );

        assert_recovered(&target.0, &audit);
    }

    /// A local HTTP server: `GET /health` answers 200 "ok"; `POST /hook`
    /// records the body. Returns its address and the recorded bodies.
    pub(super) async fn health_and_webhook() -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        use axum::routing::{get, post};
        let posts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = posts.clone();
        let app = axum::Router::new()
            .route("/health", get(|| async { "ok" }))
            .route(
                "/hook",
                post(move |body: String| {
                    let recorded = recorded.clone();
                    async move {
                        recorded.lock().expect("lock").push(body);
                        "ok"
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, posts)
    }

    /// The same scenario with nothing simulated: the fake Kubernetes API
    /// server (held to kubectl in tests/kubernetes.rs), a real S3 server, the
    /// real PostgreSQL server, a real health endpoint and webhook; `drhost
    /// run` with only a runbook config.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn database_corruption_runs_on_every_real_backend() {
        use drhost_tests::fake_kube::{FakeKube, deployment};
        let Scene {
            source: _source,
            target,
            dir,
            s3,
            runbook_text,
        } = scene("all").await;
        let kube = FakeKube::start().await.expect("fake API server");
        kube.set_ready_delay(std::time::Duration::from_millis(30));
        kube.insert(deployment(
            "resume-screening",
            "backend",
            3,
            "rs/backend:1.4",
        ));
        kube.insert(deployment(
            "resume-screening",
            "celery-worker",
            2,
            "rs/worker:1.4",
        ));
        let kubeconfig = dir.path().join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let (http, posts) = health_and_webhook().await;
        let runbook = dir.path().join("runbook.toml");
        std::fs::write(
            &runbook,
            format!(
                "{runbook_text}\n[backends.k8s]\nkubeconfig = \"kubeconfig\"\n\n\
                 [backends.health.targets.backend-api]\nurl = \"http://{http}/health\"\nbody_contains = \"ok\"\nallow_private = true\n\n\
                 [backends.notify.channels.status-page]\nurl = \"http://{http}/hook\"\nallow_private = true\nrequired = true\n"
            ),
        )
        .expect("write runbook");

        let audit = dir.path().join("audit");
        let mut cmd = tokio::process::Command::new(drhost_tests::drhost_bin());
        cmd.arg("run")
            .arg(&runbook)
            .arg("--yes")
            .arg("--audit-dir")
            .arg(&audit)
            .env("DRHOST_CACHE_DIR", dir.path().join("cache"))
            .stdin(std::process::Stdio::null());
        for (k, v) in s3.env() {
            cmd.env(k, v);
        }
        let out = cmd
            .env("PGHOST", pg::host())
            .env("PGUSER", pg::user())
            .output()
            .await
            .expect("run drhost");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "drhost run failed:\n{text}");
        assert!(
            text.contains("corrupt"),
            "the corruption was not reported:\n{text}"
        );

        // The services were stopped through the scale subresource and are
        // back at their previous counts, ready.
        for (name, replicas) in [("backend", 3), ("celery-worker", 2)] {
            let d = kube
                .get("apps/v1", "Deployment", Some("resume-screening"), name)
                .expect("deployment");
            assert_eq!(d["spec"]["replicas"], replicas, "{name}");
            assert_eq!(d["status"]["readyReplicas"], replicas, "{name}");
        }
        let scales: Vec<String> = kube
            .requests()
            .into_iter()
            .filter(|(m, p, _)| m != "GET" && p.contains("/scale"))
            .map(|(m, p, _)| format!("{m} {p}"))
            .collect();
        assert_eq!(
            scales.len(),
            4,
            "two scale-downs, two scale-ups: {scales:?}"
        );
        assert!(
            kube.requests().iter().any(|(_, p, _)| p.contains("watch=")),
            "wait-ready did not watch"
        );
        // The status page heard about it.
        let posts = posts.lock().expect("lock").clone();
        assert_eq!(posts.len(), 1, "{posts:?}");
        assert!(posts[0].contains(&target.0), "{posts:?}");
        assert_recovered(&target.0, &audit);
    }
}

mod crash_battery {
    //! The crash battery (issue "Reliability and security"): the
    //! database-corruption scenario on every real backend (PostgreSQL, the
    //! S3 server, the fake Kubernetes API server, an HTTP health endpoint
    //! and status page), the host killed with SIGKILL at fixed-seed random
    //! instants, then `drhost run --resume`. For every crash point:
    //!
    //! - the resumed run completes and the database is recovered, the
    //!   services back at their counts;
    //! - the audit log after the resume starts with every byte that was on
    //!   disk before the crash (a torn last line excepted: it is saved
    //!   beside the log), and `drhost audit verify` passes;
    //! - no mutating call whose outcome was recorded is executed twice: a
    //!   key is executed again only after an intent whose outcome is
    //!   unknown, and the API server saw no more scale requests than the
    //!   log has intents, and no fewer than it has recorded outcomes.
    //!
    //! The count of crash points survived is printed (`crash points
    //! survived: N/N`) and recorded in BENCHMARKS.md.

    use super::scenario::{Scene, health_and_webhook, scene};
    use super::*;
    use drhost::audit::EventKind;
    use drhost_tests::crash::{
        CRASH_POINTS, Rng, assert_no_double_execution, assert_nothing_lost, before_crash,
        executed_outcome, run_id, stderr_of, the_log,
    };
    use drhost_tests::fake_kube::{FakeKube, deployment};
    use std::time::{Duration, Instant};

    struct World {
        scene: Scene,
        kube: FakeKube,
        runbook: std::path::PathBuf,
    }

    impl World {
        /// The damaged database again (and no leftover of an earlier
        /// iteration), the services at 3 and 2 replicas.
        fn reset(&self) {
            let target = &self.scene.target.0;
            let leftovers = String::from_utf8_lossy(&psql(
                "postgres",
                &format!(
                    "COPY (SELECT datname FROM pg_database WHERE datname = '{target}' \
                     OR datname LIKE '{target}\\_before\\_%' OR datname LIKE '{target}\\_restore\\_%') TO STDOUT"
                ),
            ))
            .into_owned();
            for db in leftovers.lines() {
                psql("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE)"));
            }
            psql("postgres", &format!("CREATE DATABASE \"{target}\""));
            run(
                "pg_restore",
                &[
                    "--no-owner",
                    "-d",
                    target,
                    self.scene
                        .dir
                        .path()
                        .join("backup.dump")
                        .to_str()
                        .expect("utf-8"),
                ],
            );
            psql(
                "postgres",
                &format!("ALTER DATABASE \"{target}\" SET drhost.flip = 'on'"),
            );
            self.kube.insert(deployment(
                "resume-screening",
                "backend",
                3,
                "rs/backend:1.4",
            ));
            self.kube.insert(deployment(
                "resume-screening",
                "celery-worker",
                2,
                "rs/worker:1.4",
            ));
        }

        fn drhost(&self, audit: &Path, resume: Option<&str>) -> tokio::process::Command {
            let mut cmd = tokio::process::Command::new(drhost_tests::drhost_bin());
            cmd.arg("run")
                .arg(&self.runbook)
                .arg("--yes")
                .arg("--audit-dir")
                .arg(audit)
                .env("DRHOST_CACHE_DIR", self.scene.dir.path().join("cache"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            if let Some(id) = resume {
                cmd.arg("--resume").arg(id);
            }
            for (k, v) in self.scene.s3.env() {
                cmd.env(k, v);
            }
            cmd.env("PGHOST", pg::host()).env("PGUSER", pg::user());
            cmd
        }

        fn scale_requests(&self) -> usize {
            self.kube
                .requests()
                .into_iter()
                .filter(|(m, p, _)| m != "GET" && p.contains("/scale"))
                .count()
        }

        /// The recovery happened: data back, damaged copy kept, services up.
        fn assert_recovered(&self, audit: &Path, point: &str) {
            super::scenario::assert_recovered(&self.scene.target.0, audit);
            for (name, replicas) in [("backend", 3), ("celery-worker", 2)] {
                let d = self
                    .kube
                    .get("apps/v1", "Deployment", Some("resume-screening"), name)
                    .expect("deployment");
                assert_eq!(d["spec"]["replicas"], replicas, "{point}: {name}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_crash_points_resume_to_a_recovered_database() {
        let scene = scene("crash").await;
        let kube = FakeKube::start().await.expect("fake API server");
        kube.set_ready_delay(Duration::from_millis(30));
        let kubeconfig = scene.dir.path().join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let (http, _posts) = health_and_webhook().await;
        let runbook = scene.dir.path().join("runbook.toml");
        std::fs::write(
            &runbook,
            format!(
                "{}\n[backends.k8s]\nkubeconfig = \"kubeconfig\"\n\n\
                 [backends.health.targets.backend-api]\nurl = \"http://{http}/health\"\nbody_contains = \"ok\"\nallow_private = true\n\n\
                 [backends.notify.channels.status-page]\nurl = \"http://{http}/hook\"\nallow_private = true\nrequired = true\n",
                scene.runbook_text
            ),
        )
        .expect("write runbook");
        let world = World {
            scene,
            kube,
            runbook,
        };

        // An uninterrupted run: how long one takes, so the kill instants
        // spread over the whole run.
        world.reset();
        let audit = world.scene.dir.path().join("audit-full");
        let t0 = Instant::now();
        let out = world
            .drhost(&audit, None)
            .output()
            .await
            .expect("run drhost");
        let full = t0.elapsed();
        assert!(
            out.status.success(),
            "the uninterrupted run failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        world.assert_recovered(&audit, "uninterrupted run");

        let mut rng = Rng(0x5eed_0dc0_de00_0001);
        let (mut survived, mut tried, mut before_first_record, mut in_flight_asked) = (0, 0, 0, 0);
        let mut iteration = 0;
        while tried < CRASH_POINTS {
            iteration += 1;
            assert!(
                iteration <= 3 * CRASH_POINTS,
                "only {tried} of {iteration} kills landed before the run ended (a run takes {full:?})"
            );
            world.reset();
            let audit = world.scene.dir.path().join(format!("audit-{iteration}"));
            let kill_at = full.mul_f64(rng.next_f64());
            let point = format!("crash point {iteration} (SIGKILL after {kill_at:?} of ~{full:?})");
            let scales_before = world.scale_requests();
            let mut child = world.drhost(&audit, None).spawn().expect("spawn drhost");
            let finished = tokio::time::timeout(kill_at, child.wait()).await;
            if let Ok(status) = finished {
                // The run ended before the kill: not a crash point.
                let err = stderr_of(&mut child).await;
                assert!(
                    status.expect("wait").success(),
                    "{point}: the run failed:\n{err}"
                );
                continue;
            }
            child.start_kill().expect("SIGKILL");
            let _ = child.wait().await;
            tried += 1;

            let Some(log) = the_log(&audit) else {
                // Killed before its first record: nothing may have changed.
                assert_eq!(
                    world.scale_requests(),
                    scales_before,
                    "{point}: a scale request without an audit record"
                );
                before_first_record += 1;
                let out = world
                    .drhost(&audit, None)
                    .output()
                    .await
                    .expect("run drhost");
                assert!(
                    out.status.success(),
                    "{point}: the fresh run failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                world.assert_recovered(&audit, &point);
                survived += 1;
                continue;
            };
            let (before, whole, finished) = before_crash(&log);
            if finished {
                // Killed after its last record: nothing to resume.
                world.assert_recovered(&audit, &point);
                survived += 1;
                continue;
            }
            let out = world
                .drhost(&audit, Some(&run_id(&log)))
                .output()
                .await
                .expect("resume drhost");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{point}: the resume failed:\n{text}");
            assert!(text.contains("resuming run"), "{point}: {text}");
            if text.contains("may or may not have taken effect") {
                in_flight_asked += 1;
            }
            assert_nothing_lost(&log, &before, whole, &point);
            let records = drhost::audit::read_records(&log).expect("records");
            assert_no_double_execution(&records, &point);
            let scale = |r: &&drhost::audit::Record| r.operation.as_deref() == Some("scale");
            let intents = records
                .iter()
                .filter(|r| r.event == EventKind::CallIntent)
                .filter(scale)
                .count();
            let done = records
                .iter()
                .filter(|r| executed_outcome(r))
                .filter(scale)
                .count();
            let reached = world.scale_requests() - scales_before;
            assert!(
                done <= reached && reached <= intents,
                "{point}: the API server saw {reached} scale requests; the log has {intents} intents, {done} recorded outcomes"
            );
            world.assert_recovered(&audit, &point);
            survived += 1;
        }
        println!(
            "crash points survived: {survived}/{tried} (killed before the first record: {before_first_record}; \
             operator asked about calls in flight: {in_flight_asked}; one uninterrupted run: {full:?})"
        );
        assert_eq!(survived, tried);
    }
}

mod server_killed {
    //! A PostgreSQL server killed (`pg_ctl stop -m immediate`) in the middle
    //! of a restore's data phase, on a throwaway cluster (initdb on a free
    //! port in a temp dir, as the `postgres` user when run as root): the
    //! restore fails saying the server is gone and naming the partial
    //! database to drop, and after the server restarts the original
    //! database is intact.

    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use drhost::capability::postgres::restore::{RestoreError, RestoreOptions, restore};

    struct Cluster {
        dir: tempfile::TempDir,
        bin: PathBuf,
        port: u16,
        as_postgres: bool,
    }

    impl Cluster {
        fn ctl(&self, args: &[&str]) -> std::process::Output {
            let pg_ctl = self.bin.join("pg_ctl");
            let mut cmd = if self.as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
                c
            } else {
                Command::new(&pg_ctl)
            };
            cmd.arg("-D")
                .arg(self.dir.path().join("data"))
                .args(args)
                .output()
                .expect("pg_ctl")
        }

        fn start(&self) {
            let opts = format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c fsync=off",
                self.port,
                self.dir.path().display()
            );
            let log = self.dir.path().join("log");
            let out = self.ctl(&[
                "-w",
                "-o",
                &opts,
                "-l",
                log.to_str().expect("utf-8"),
                "start",
            ]);
            assert!(
                out.status.success(),
                "cannot start the throwaway cluster: {}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }

        fn kill(&self) {
            let out = self.ctl(&["-m", "immediate", "stop"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        fn psql(&self, db: &str, sql: &str) -> Vec<u8> {
            let out = Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                ])
                .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
                .output()
                .expect("psql");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        }

        fn config(&self) -> Config {
            let mut c = Config::new();
            c.host("127.0.0.1")
                .port(self.port)
                .user("postgres")
                .dbname("postgres");
            c
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            let _ = self.ctl(&["-m", "immediate", "stop"]);
        }
    }

    fn throwaway_cluster() -> Cluster {
        let bin = PathBuf::from(
            String::from_utf8(run("pg_config", &["--bindir"]))
                .expect("utf-8")
                .trim(),
        );
        let root = Command::new("id").arg("-u").output().expect("id -u");
        let as_postgres = String::from_utf8_lossy(&root.stdout).trim() == "0";
        let dir = tempfile::tempdir().expect("tempdir");
        if as_postgres {
            let out = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .output()
                .expect("chown");
            assert!(
                out.status.success(),
                "initdb refuses root: chown to postgres failed"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut initdb = if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join("initdb"));
            c
        } else {
            Command::new(bin.join("initdb"))
        };
        let out = initdb
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .output()
            .expect("initdb (install the PostgreSQL server package: Debian postgresql)");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster {
            dir,
            bin,
            port,
            as_postgres,
        };
        cluster.start();
        cluster
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_killed_mid_restore_leaves_the_original_intact_and_names_the_partial_database()
    {
        let cluster = throwaway_cluster();
        cluster.psql("postgres", "CREATE DATABASE src");
        cluster.psql(
            "src",
            "CREATE TABLE big (id bigint PRIMARY KEY, note text); \
             INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 400000) g;",
        );
        cluster.psql("postgres", "CREATE DATABASE app");
        cluster.psql(
            "app",
            "CREATE TABLE precious (x int); INSERT INTO precious VALUES (7);",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("src.dump");
        let out = Command::new("pg_dump")
            .args(["-Fc", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(cluster.port.to_string())
            .args(["-d", "src", "-f"])
            .arg(&path)
            .output()
            .expect("pg_dump");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&path).expect("dump");

        let mut options = RestoreOptions::new(cluster.config(), "app", "rk");
        options.jobs = 2;
        let progress = options.progress.clone();
        let restoring =
            tokio::spawn(async move { restore(&options, std::io::Cursor::new(bytes)).await });
        // Kill the server once rows are flowing.
        let mut waited = 0;
        while progress.snapshot().loaded_bytes < (1 << 20) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
            assert!(waited < 3000, "the restore never reached the data phase");
        }
        cluster.kill();
        let err = restoring
            .await
            .expect("restore task")
            .expect_err("the server is gone");
        let msg = err.to_string();
        assert!(
            matches!(err, RestoreError::PartialLeft { ref partial, .. } if partial == "app_restore_rk"),
            "the error should name the partial database: {msg}"
        );
        assert!(msg.contains("drop it by hand"), "{msg}");

        cluster.start();
        assert_eq!(
            String::from_utf8_lossy(&cluster.psql("app", "COPY precious TO STDOUT")),
            "7\n"
        );
        // What the error told the operator to do works.
        cluster.psql("postgres", "DROP DATABASE app_restore_rk");
    }
}
