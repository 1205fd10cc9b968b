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

Standard library only; Python 3.11. The S3 server, the runbook, the
PostgreSQL settings (PGHOST/PGPORT/PGUSER, default 127.0.0.1:5432 postgres)
and the cleanup of the targets are restore_bench.py's own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from restore_bench import (  # noqa: E402  (the bench's own S3 server, runbook, cleanup)
    BUCKET, PG_ENV, REGION, TARGET_DB, BenchError, drop_targets, start_s3, stop_s3, write_runbook,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=["a", "b"])
    ap.add_argument("rounds", type=int)
    ap.add_argument("drhost", nargs="+", help="drhost binaries to compare")
    ap.add_argument("--workdir", default="/tmp/drhost-restore-bench")
    ap.add_argument("--s3-server", default="target/release/s3-server")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    dump = workdir / f"{args.dataset}.dump"
    if not dump.is_file():
        sys.exit(f"{dump} is missing: run tests/bench/restore_bench.py first")
    for b in [*args.drhost, args.s3_server]:
        if not os.access(b, os.X_OK):
            sys.exit(f"not an executable: {b}")
    # The restores run in a work directory (their audit logs go there).
    drhosts = [str(Path(b).resolve()) for b in args.drhost]

    s3 = None
    try:
        s3 = start_s3(args.s3_server, workdir, [dump])
        runbook = write_runbook(workdir, s3)
        env = dict(PG_ENV, AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key,
                   AWS_REGION=REGION)
        rundir = workdir / "ab-run"
        rundir.mkdir(exist_ok=True)
        results: dict[str, list[tuple[float, float, float]]] = {b: [] for b in drhosts}
        for r in range(args.rounds):
            for b in drhosts if r % 2 == 0 else drhosts[::-1]:
                drop_targets()
                subprocess.run(["psql", "-X", "-q", "-d", "postgres", "-c", "CHECKPOINT"],
                               env=PG_ENV, check=True)
                started = time.monotonic()
                p = subprocess.run([b, "exec", "--config", str(runbook), "--yes", "postgres", "restore",
                                    TARGET_DB, BUCKET, dump.name],
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
    except BenchError as e:
        sys.exit(str(e))
    finally:
        stop_s3(s3)
        drop_targets()


if __name__ == "__main__":
    main()
