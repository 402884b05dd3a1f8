"""Discovery at scale (issue 24): one sensor tick of one source over trees of many files.

    python -m benchmarks.discovery                        # 10k, 100k, 300k and 1M files
    python -m benchmarks.discovery --sizes 10000,100000 --rounds 2
    python -m benchmarks.discovery --dirs 100 --out benchmarks/results/mine.json

Starts the local stack (devstack's LocalStack: sshd, the S3 server, PostgreSQL on free loopback
ports) and, for each size, builds a tree of one-byte files spread over --dirs directories under
the SFTP root (mtimes an hour old, so that the stability gate passes), with a transfer-log
database and a Dagster database of its own (the project's dagster.yaml on PostgreSQL, as
sftp_minio_assets_tests/conftest.py's start_daemon sets it up). Then:

- the first tick: the transfer log empty (migrated with `python -m sftp_minio_assets.cli
  migrate`, as a deployment does), no partition;
- the steady state: every file COMPLETED in the log with its size and mtime (rows written with
  COPY), its partition added (instance.add_dynamic_partitions, in chunks); nothing new;
- --rounds rounds of: a steady tick, the project's SFTP listing alone, OpenSSH's listing.

A tick is the sensor `new_files_default` of the project's definitions
(sftp_minio_assets/definitions.py, configured by the stack's environment variables), evaluated
as sftp_minio_assets_tests/support.py's `tick` does: `dg.build_sensor_context(instance=...,
resources=...)` and a call of the sensor, on the PostgreSQL-backed instance. Its partition
requests are not applied and its runs not launched: that is the daemon's work after the tick.
Each tick, and each listing alone, runs in a fresh process (this module with --tick or
--listing), so that its peak RSS and its CPU are its own; it reports JSON on its stdout.

Columns of the table (and the rows of the JSON's "rows"):

- files: the tree's one-byte files, spread evenly over --dirs directories (none at its root);
- first s / first CPU s: wall time of the first tick (resources built, the sensor called, its
  resources torn down) and the CPU of the tick's process over it, its reaped children (the
  openssh transport's `ssh`) included; imports and the instance's creation left out;
- first RSS MiB: the peak RSS of the tick's process (VmHWM: Linux carries ru_maxrss over from
  the forking process), Dagster and the project imported (`base_rss_mib` in the JSON: the peak
  before the tick);
- requested / runs / added: files in the first tick's run requests (a range counted through
  the partitions it adds), its run requests, the partition keys it adds (the sensor requests at
  most MAX_REQUESTS_PER_TICK files per tick, so fewer than the tree above that);
- steady s / CPU s / RSS MiB: the same for the steady ticks, medians of --rounds (every value in
  the JSON);
- listing s: `SourceResource.list_files()` alone (sftp_minio_assets/defs/resources.py), in a
  process of its own, connection included, median;
- OpenSSH s: OpenSSH's `sftp -b` over the same tree (`ls -l` of the root and of each directory,
  output to /dev/null), host key checked as benchmarks/transports.py does, process start and
  handshake included: the protocol's floor, median. OpenSSH's client waits for each READDIR's
  answer before the next, where the project's listing keeps several directories in flight
  (sftp/listing.py), so the listing alone can come in under this floor;
- steady/OpenSSH: the steady tick's median over OpenSSH's.

Writes JSON to benchmarks/results/<date>-discovery.json (--out to override). Every server it
starts is stopped by PID at the end, also on Ctrl-C or SIGTERM. A tree of a million files takes
a million inodes and minutes to build and to load into the log and the partitions on a 2-core
machine; each tree is removed once measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.transports import strict_ssh_options
from devstack.local_stack import LocalStack

PROJECT = Path(__file__).resolve().parents[1]
SOURCE = "default"
SENSOR = f"new_files_{SOURCE}"
AGE_SECONDS = 3600  # the files' mtimes are this old: past any MIN_FILE_AGE_SECONDS default
PARTITION_CHUNK = 10_000  # keys per add_dynamic_partitions
DEFAULT_SIZES = "10000,100000,300000,1000000"
CHILD_TIMEOUT = 3600


# --- in a child process: one tick, or the listing alone ------------------------------------


def _usage() -> tuple[float, float, int]:
    """CPU seconds of this process, CPU seconds of its reaped children, peak RSS in KiB.

    The peak is VmHWM, this process's own: Linux carries ru_maxrss across exec, so a child's
    ru_maxrss starts at the RSS of the process that forked it (this benchmark's, which holds
    the tree's paths and Dagster)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime, peak


def _measured(before: tuple[float, float, int], seconds: float) -> dict[str, float]:
    after = _usage()
    return {
        "seconds": seconds,
        "cpu_s": after[0] - before[0] + after[1] - before[1],
        "children_cpu_s": after[1] - before[1],
        "base_rss_mib": before[2] / 1024,
        "peak_rss_mib": after[2] / 1024,
    }


def child_tick() -> dict[str, Any]:
    """One evaluation of the sensor on the instance of DAGSTER_HOME, as support.tick does."""
    import dagster as dg

    from sftp_minio_assets.definitions import defs
    from sftp_minio_assets.defs.partitions import partitions_name

    instance = dg.DagsterInstance.get()
    sensor = defs.resolve_sensor_def(SENSOR)
    resources = dict(defs.resources or {})
    before = _usage()
    started = time.perf_counter()
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        evaluation_started = time.perf_counter()
        result = sensor(context)
        evaluation = time.perf_counter() - evaluation_started
    measured = _measured(before, time.perf_counter() - started)
    # Counted after the measure: reading the partitions back would add to the peak.
    added = [
        key
        for request in result.dynamic_partitions_requests or []
        if isinstance(request, dg.AddDynamicPartitionsRequest)
        for key in request.partition_keys
    ]
    deleted = sum(
        len(request.partition_keys)
        for request in result.dynamic_partitions_requests or []
        if isinstance(request, dg.DeleteDynamicPartitionsRequest)
    )
    requests = result.run_requests or []
    order: dict[str, int] = {}
    if any(not request.partition_key for request in requests):
        known = list(instance.get_dynamic_partitions(partitions_name(SOURCE)))
        order = {key: i for i, key in enumerate([*known, *added])}
    requested = 0
    for request in requests:
        if request.partition_key:
            requested += 1
        else:
            span = request.partition_key_range
            requested += order[span.end] - order[span.start] + 1
    skip = result.skip_reason.skip_message if result.skip_reason else None
    instance.dispose()
    return {
        **measured,
        "evaluation_s": evaluation,
        "requested": requested,
        "runs": len(requests),
        "partitions_added": len(added),
        "partitions_deleted": deleted,
        "skip_reason": skip,
    }


def child_listing() -> dict[str, Any]:
    """SourceResource.list_files() of the source of the SFTP_* variables, alone."""
    from sftp_minio_assets.definitions import defs

    source = (defs.resources or {})[f"source_{SOURCE}"]
    # Its settings resolved (EnvVar) as in a run; its SFTP session opened by list_files and
    # closed on leaving (the `ssh` child reaped then, its CPU counted).
    with source.process_config_and_initialize_cm() as initialized:
        before = _usage()
        started = time.perf_counter()
        listing = initialized.list_files()
        seconds = time.perf_counter() - started
    files, skipped = len(listing.files), len(listing.skipped)
    return {**_measured(before, seconds), "files": files, "skipped": skipped}


def run_child(mode: str) -> None:
    """Runs in the child: the measure's JSON alone on stdout, anything else said on stderr."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    result = child_tick() if mode == "tick" else child_listing()
    out.write(json.dumps(result) + "\n")
    out.close()


def in_child(mode: str, env: dict[str, str]) -> dict[str, Any]:
    """This module in a fresh process (--tick or --listing), its JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.discovery", f"--{mode}"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    if done.returncode != 0 or not done.stdout.strip():
        tail = "\n".join(done.stderr.splitlines()[-40:])
        raise RuntimeError(f"--{mode} failed ({done.returncode}):\n{tail}")
    return json.loads(done.stdout)


# --- the tree, the log and the partitions ---------------------------------------------------


def build_tree(folder: Path, files: int, dirs: int) -> tuple[list[str], int]:
    """files one-byte files over dirs directories (dirNN/file-NNNNNNN.bin), their mtime an hour
    ago; the relative paths, sorted, and that mtime."""
    mtime = int(time.time()) - AGE_SECONDS
    width = max(2, len(str(dirs - 1)))
    names = [f"dir{d:0{width}d}" for d in range(dirs)]
    for name in names:
        (folder / name).mkdir(parents=True, mode=0o755)
    folder.chmod(0o755)
    paths = []
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for index in range(files):
        path = f"{names[index % dirs]}/file-{index:07d}.bin"
        fd = os.open(folder / path, flags, 0o644)
        try:
            os.write(fd, b"x")
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        paths.append(path)
    paths.sort()
    return paths, mtime


def steady_state(env: dict[str, str], paths: list[str], mtime: int) -> dict[str, float]:
    """Every file COMPLETED in the log with its size and mtime (the first tick's QUEUED rows
    replaced), and its partition added. Seconds each took."""
    import dagster as dg
    import psycopg

    from sftp_minio_assets.core.keys import encode_key
    from sftp_minio_assets.defs.partitions import partitions_name

    keys = [encode_key(path) for path in paths]
    started = time.perf_counter()
    when = datetime.datetime.fromtimestamp(mtime, datetime.UTC)
    done = datetime.datetime.now(datetime.UTC)
    columns = (
        "filename, source, status, size_bytes, remote_mtime, object_key, worker_id, attempts, "
        "transfer_start_time, transfer_end_time, file_size_mb, stored_bytes, verification"
    )
    with psycopg.connect(env["TRANSFER_DB_URL"]) as conn:
        conn.execute("TRUNCATE file_transfer_log, transfer_uploads, file_sightings")
        with conn.cursor().copy(f"COPY file_transfer_log ({columns}) FROM STDIN") as copy:
            for path, key in zip(paths, keys, strict=True):
                copy.write_row(
                    (key, SOURCE, "COMPLETED", 1, when, f"{SOURCE}/{path}", "benchmark", 1,
                     done, done, 0, 1, "size")
                )  # fmt: skip
        conn.execute("ANALYZE file_transfer_log")
    rows = time.perf_counter() - started
    started = time.perf_counter()
    with _environment(env):
        instance = dg.DagsterInstance.get()
        try:
            name = partitions_name(SOURCE)
            for start in range(0, len(keys), PARTITION_CHUNK):
                instance.add_dynamic_partitions(name, keys[start : start + PARTITION_CHUNK])
            present = len(instance.get_dynamic_partitions(name))
        finally:
            instance.dispose()
    if present != len(keys):
        raise RuntimeError(f"{present} partitions, expected {len(keys)}")
    return {"log_rows_s": rows, "partitions_s": time.perf_counter() - started}


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --- OpenSSH's listing: the floor --------------------------------------------------------------


def openssh_listing(stack: LocalStack, folder: Path, dirs: list[str]) -> dict[str, float]:
    """`sftp -b` listing the root and each directory with `ls -l`, output to /dev/null."""
    ssh = stack.ssh
    batch = stack.base / f"ls-{folder.name}.batch"
    lines = [f'ls -l "{folder}"', *(f'ls -l "{folder / d}"' for d in dirs)]
    batch.write_text("\n".join(lines) + "\n")
    target = {"known_hosts": str(ssh.known_hosts_path), "key": str(ssh.private_key_path)}
    argv = ["sftp", "-q", *strict_ssh_options(target), "-P", str(ssh.port), "-b", str(batch)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [*argv, f"{ssh.username}@{ssh.host}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"sftp -b failed ({done.returncode}):\n{done.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"seconds": seconds, "client_cpu_s": cpu}


# --- one size ----------------------------------------------------------------------------------


def environment(stack: LocalStack, folder: Path, name: str, bucket: str) -> dict[str, str]:
    """The project's environment on the stack, with the tree as SFTP_ROOT, a transfer log and a
    Dagster database of its own (DAGSTER_HOME with the project's dagster.yaml)."""
    home = stack.base / f"home-{name}"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    inherited = {k: v for k, v in os.environ.items() if k != "SOURCES_FILE"}
    stack.postgres.create_database(f"dagster_{name}")
    return {
        **inherited,
        **stack.env(bucket=bucket),
        "SFTP_ROOT": str(folder),
        "TRANSFER_DB_URL": stack.postgres.create_database(f"log_{name}"),
        "DAGSTER_PG_DB": f"dagster_{name}",
        "DAGSTER_HOME": str(home),
    }


def measure_size(stack: LocalStack, files: int, dirs: int, rounds: int, bucket: str) -> dict:
    name = f"{files}"
    folder = stack.ssh.root / f"tree-{name}"
    say(f"{files:>9,} files: building the tree over {dirs} directories")
    started = time.perf_counter()
    paths, mtime = build_tree(folder, files, dirs)
    built = time.perf_counter() - started
    env = environment(stack, folder, name, bucket)
    try:
        subprocess.run(
            [sys.executable, "-m", "sftp_minio_assets.cli", "migrate"],
            cwd=PROJECT,
            env=env,
            check=True,
            capture_output=True,
        )
        say(f"{files:>9,} files: tree in {built:.1f} s; the first tick")
        first = in_child("tick", env)
        say(f"  first tick {first['seconds']:.2f} s, {first['requested']} requested")
        setup = steady_state(env, paths, mtime)
        say(f"  steady state set up: {setup}")
        steady, listing, floor = [], [], []
        dir_names = sorted({path.split("/", 1)[0] for path in paths})
        for round_ in range(rounds):
            steady.append(in_child("tick", env))
            listing.append(in_child("listing", env))
            floor.append(openssh_listing(stack, folder, dir_names))
            say(
                f"  round {round_ + 1}: steady tick {steady[-1]['seconds']:.2f} s "
                f"({steady[-1]['cpu_s']:.2f} s CPU, {steady[-1]['peak_rss_mib']:.0f} MiB), "
                f"listing {listing[-1]['seconds']:.2f} s, OpenSSH {floor[-1]['seconds']:.2f} s"
            )
            if steady[-1]["requested"] or listing[-1]["files"] != files:
                raise RuntimeError(f"not the steady state: {steady[-1]}, {listing[-1]}")
        fast = fast_ticks({**env, "SFTP_LISTING": "fast"}, dirs + 1, rounds)
        requesting = requesting_tick(env, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "files": files,
        "dirs": dirs,
        "build_tree_s": built,
        "setup": setup,
        "first_tick": first,
        "steady_ticks": steady,
        "listing_alone": listing,
        "openssh_listing": floor,
        "fast_steady_ticks": fast,
        "requesting_tick": requesting,
    }


def requesting_tick(env: dict[str, str], folder: Path, new: int = 10) -> dict:
    """A tick that finds `new` files in a new directory of the tree whose every other file is
    COMPLETED and a partition: it requests them, and so looks up where the source's partitions
    are (all of them: none of the new files has one). Where the listing outlasts a tick, the
    ticks before the one that reaches them are counted."""
    mtime = int(time.time()) - AGE_SECONDS
    (folder / "new").mkdir()
    for index in range(new):
        path = folder / "new" / f"file-{index:03d}.bin"
        path.write_bytes(b"y")
        os.utime(path, (mtime, mtime))
    ticks: list[dict] = []
    while sum(tick["requested"] for tick in ticks) < new and len(ticks) < WARM_UP_TICKS:
        ticks.append(in_child("tick", env))
    tick = ticks[-1]
    say(
        f"  requesting tick {tick['seconds']:.2f} s ({tick['cpu_s']:.2f} s CPU, "
        f"{tick['peak_rss_mib']:.0f} MiB), {tick['requested']} requested "
        f"(after {len(ticks) - 1} ticks that did not reach them)"
    )
    if tick["requested"] != new:
        raise RuntimeError(f"expected {new} requested: {ticks}")
    return {**tick, "ticks_before": len(ticks) - 1}


def fast_ticks(env: dict[str, str], directories: int, rounds: int) -> list[dict]:
    """Steady ticks with SFTP_LISTING=fast, once the directories are settled: ticks read and
    record every directory (over several ticks where the tree takes longer than a tick to
    list), SETTLE_SECONDS apart, until one leaves them all unread."""
    from sftp_minio_assets.db.sensor_memory import SETTLE_SECONDS

    unread = f"; {directories} unchanged directories not read"
    for _ in range(WARM_UP_TICKS):
        time.sleep(SETTLE_SECONDS + 0.5)
        if unread in (in_child("tick", env)["skip_reason"] or ""):
            break
    else:
        raise RuntimeError(f"the directories did not settle in {WARM_UP_TICKS} fast ticks")
    ticks = []
    for round_ in range(rounds):
        ticks.append(in_child("tick", env))
        say(
            f"  fast round {round_ + 1}: steady tick {ticks[-1]['seconds']:.2f} s "
            f"({ticks[-1]['cpu_s']:.2f} s CPU, {ticks[-1]['peak_rss_mib']:.0f} MiB)"
        )
        if ticks[-1]["requested"] or unread not in (ticks[-1]["skip_reason"] or ""):
            raise RuntimeError(f"not a fast steady tick: {ticks[-1]}")
    return ticks


# Ticks a benchmark waits at most for what takes several where a listing outlasts a tick.
WARM_UP_TICKS = 8


def summarize(size: dict) -> dict[str, Any]:
    def median(runs: list[dict], field: str) -> float:
        return statistics.median(run[field] for run in runs)

    first, steady = size["first_tick"], size["steady_ticks"]
    floor = median(size["openssh_listing"], "seconds")
    return {
        "files": size["files"],
        "first_s": first["seconds"],
        "first_cpu_s": first["cpu_s"],
        "first_rss_mib": first["peak_rss_mib"],
        "requested": first["requested"],
        "runs": first["runs"],
        "added": first["partitions_added"],
        "steady_s": median(steady, "seconds"),
        "steady_cpu_s": median(steady, "cpu_s"),
        "steady_rss_mib": median(steady, "peak_rss_mib"),
        "steady_base_rss_mib": median(steady, "base_rss_mib"),
        "listing_s": median(size["listing_alone"], "seconds"),
        "listing_cpu_s": median(size["listing_alone"], "cpu_s"),
        "listing_rss_mib": median(size["listing_alone"], "peak_rss_mib"),
        "openssh_s": floor,
        "steady_over_openssh": median(steady, "seconds") / floor,
        "fast_steady_s": median(size["fast_steady_ticks"], "seconds"),
        "fast_steady_rss_mib": median(size["fast_steady_ticks"], "peak_rss_mib"),
        "requesting_s": size["requesting_tick"]["seconds"],
        "requesting_rss_mib": size["requesting_tick"]["peak_rss_mib"],
    }


COLUMNS = [
    ("files", "files", "{:,}"),
    ("first s", "first_s", "{:.2f}"),
    ("first CPU s", "first_cpu_s", "{:.2f}"),
    ("first RSS MiB", "first_rss_mib", "{:.0f}"),
    ("requested / runs / added", None, ""),
    ("steady s", "steady_s", "{:.2f}"),
    ("steady CPU s", "steady_cpu_s", "{:.2f}"),
    ("steady RSS MiB", "steady_rss_mib", "{:.0f}"),
    ("listing s", "listing_s", "{:.2f}"),
    ("OpenSSH s", "openssh_s", "{:.2f}"),
    ("steady/OpenSSH", "steady_over_openssh", "{:.1f}x"),
    ("fast steady s", "fast_steady_s", "{:.2f}"),
    ("fast RSS MiB", "fast_steady_rss_mib", "{:.0f}"),
    ("10 new s", "requesting_s", "{:.2f}"),
    ("10 new RSS MiB", "requesting_rss_mib", "{:.0f}"),
]


def table(rows: list[dict]) -> str:
    lines = [
        "| " + " | ".join(title for title, _, _ in COLUMNS) + " |",
        "|---" * len(COLUMNS) + "|",
    ]
    for row in rows:
        cells = [
            f"{row['requested']:,} / {row['runs']} / {row['added']:,}"
            if field is None
            else form.format(row[field])
            for _, field, form in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="files per tree, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="steady ticks and listings")
    parser.add_argument("--dirs", type=int, default=100, help="directories per tree")
    parser.add_argument("--out", help="the JSON (default benchmarks/results/<date>-discovery.json)")
    parser.add_argument("--tick", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--listing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tick or args.listing:
        run_child("tick" if args.tick else "listing")
        return
    sizes = [int(size.replace("_", "")) for size in args.sizes.split(",") if size.strip()]
    if args.dirs < 1 or args.rounds < 1 or any(size < args.dirs for size in sizes):
        parser.error("--dirs and --rounds at least 1, and every size at least --dirs")
    out = Path(
        args.out or PROJECT / "benchmarks" / "results" / f"{datetime.date.today()}-discovery.json"
    )
    # Stopped by a signal, the stack stops too (LocalStack's exit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    results = []
    bucket = "discovery"
    # Its own temporary directory (sftp-minio-stack-*), removed once every server has stopped.
    with LocalStack() as stack:
        say(f"local stack in {stack.base}")
        stack.s3.client().create_bucket(Bucket=bucket)
        for files in sizes:
            results.append(measure_size(stack, files, args.dirs, args.rounds, bucket))
    rows = [summarize(size) for size in results]
    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    print(
        f"One tick of `{SENSOR}` per tree (one-byte files over {args.dirs} directories), in a "
        f"process of its own; steady columns: medians of {args.rounds}; {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}; SFTP_TRANSPORT={os.environ.get('SFTP_TRANSPORT', 'auto')}"
        f"; {ssh_version}; took {time.monotonic() - started:.0f} s"
    )
    print(table(rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": str(datetime.date.today()),
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "sftp_transport": os.environ.get("SFTP_TRANSPORT", "auto"),
                "openssh": ssh_version,
                "rounds": args.rounds,
                "rows": rows,
                "raw": results,
            },
            indent=2,
        )
    )
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
