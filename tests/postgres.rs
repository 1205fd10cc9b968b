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
