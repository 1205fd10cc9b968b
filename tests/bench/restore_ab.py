#!/usr/bin/env python3
"""A/B of two (or more) drhost builds on one restore, phase by phase.

Restores dataset a or b of `restore_bench.py` (run that first: it generates
the dumps and the S3 root in --workdir) from the S3 server binary with each
given drhost binary, runs interleaved (ABBA...), and prints per run and as
medians the wall time and the `data` and `post-data` phases that
`drhost exec ... postgres restore` reports. The restored database is dropped
before every run; the server is checkpointed first.

Usage:
  cp target/release/drhost /tmp/drhost-before   # build, copy, change, rebuild
  python3 tests/bench/restore_ab.py b 4 /tmp/drhost-before target/release/drhost

Standard library only; Python 3.11. Needs PGHOST/PGUSER to reach a server
where the role may create and drop databases (default 127.0.0.1, postgres).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET = "drbench_target"


def psql(env: dict[str, str], sql: str) -> str:
    p = subprocess.run(["psql", "-X", "-qAt", "-d", "postgres", "-c", sql],
                       env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"psql failed on {sql!r}: {p.stderr.strip()}")
    return p.stdout


def drop_targets(env: dict[str, str]) -> None:
    for db in psql(env, f"SELECT datname FROM pg_database WHERE datname = '{TARGET}' "
                        f"OR datname LIKE '{TARGET}\\_%'").split():
        psql(env, f'DROP DATABASE "{db}" WITH (FORCE)')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=["a", "b"])
    ap.add_argument("rounds", type=int)
    ap.add_argument("drhost", nargs="+", help="drhost binaries to compare")
    ap.add_argument("--workdir", default="/tmp/drhost-restore-bench")
    ap.add_argument("--s3-server", default="target/release/s3-server")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    runbook_src = workdir / "drbench-runbook.toml"
    if not runbook_src.is_file() or not (workdir / "s3root").is_dir():
        sys.exit(f"{workdir} has no runbook or s3root: run tests/bench/restore_bench.py first")
    for b in [*args.drhost, args.s3_server]:
        if not os.access(b, os.X_OK):
            sys.exit(f"not an executable: {b}")
    # The restores run in a work directory (their audit logs go there).
    args.drhost = [str(Path(b).resolve()) for b in args.drhost]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([args.s3_server, "--root", str(workdir / "s3root"), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        fields = dict(t.split("=", 1) for t in server.stdout.readline().split() if "=" in t)
        if "endpoint" not in fields:
            sys.exit(f"{args.s3_server} did not print its endpoint")
        runbook = workdir / "ab-runbook.toml"
        runbook.write_text(re.sub(r'endpoint = ".*"', f'endpoint = "{fields["endpoint"]}"',
                                  runbook_src.read_text()))
        env = dict(os.environ, AWS_ACCESS_KEY_ID=fields["access_key"],
                   AWS_SECRET_ACCESS_KEY=fields["secret_key"], AWS_REGION="us-east-1")
        env.setdefault("PGHOST", "127.0.0.1")
        env.setdefault("PGUSER", "postgres")
        rundir = workdir / "ab-run"
        rundir.mkdir(exist_ok=True)
        results: dict[str, list[tuple[float, float, float]]] = {b: [] for b in args.drhost}
        for r in range(args.rounds):
            for b in args.drhost if r % 2 == 0 else args.drhost[::-1]:
                drop_targets(env)
                psql(env, "CHECKPOINT")
                started = time.monotonic()
                p = subprocess.run([b, "exec", "--config", str(runbook), "--yes", "postgres", "restore",
                                    TARGET, "backups", f"{args.dataset}.dump"],
                                   env=env, cwd=rundir, capture_output=True, text=True)
                wall = time.monotonic() - started
                if p.returncode != 0 or "{" not in p.stdout:
                    sys.exit(f"{b} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
                report = json.loads(p.stdout[p.stdout.index("{"):])
                phases = {x["name"]: x["duration_ms"] / 1000 for x in report["phases"]}
                results[b].append((wall, phases["data"], phases["post-data"]))
                print(f"{b}: wall {wall:.2f} s, data {phases['data']:.2f} s, "
                      f"post-data {phases['post-data']:.2f} s", flush=True)
        for b, runs in results.items():
            med = [statistics.median(x[i] for x in runs) for i in range(3)]
            print(f"{b}: medians of {len(runs)}: wall {med[0]:.2f} s, data {med[1]:.2f} s, "
                  f"post-data {med[2]:.2f} s (min {min(x[2] for x in runs):.2f} s)")
    finally:
        server.kill()
        drop_targets(env if "env" in locals() else dict(os.environ, PGHOST="127.0.0.1", PGUSER="postgres"))


if __name__ == "__main__":
    main()
