"""Two code trees through the daemon on one stack, their rounds alternating: what a change does.

    python -m benchmarks.compare --workload "500 x 4 KiB" --rounds 4 \\
        before=/work/main,DAGSTER_EVENT_BATCH_SIZE=0 after=.

Each arm names a tree (a checkout of this project) and, after commas, environment variables of
its own. The pipeline runs as in benchmarks.run (a real daemon on the tree's dagster.yaml, timed
from the files' arrival to the last COMPLETED row) with the daemon started in that tree: it is
first on the daemon's sys.path, so the daemon, its code server and the run workers run that
tree's code. Arms alternate within each round, so that the load of the machine, which moves
between minutes, falls on both alike: CPU per file by process, seconds and runs, as medians.
A far workload ("500 x 64 KiB, 40 ms RTT") puts benchmarks.run's relay before sshd for both arms.
"""

import argparse
import contextlib
import json
import statistics
import uuid
from pathlib import Path

from devstack.local_stack import LocalStack

from . import run as bench


def parse_arm(text: str) -> tuple[str, Path, dict[str, str]]:
    name, _, rest = text.partition("=")
    tree, *assignments = rest.split(",")
    env = dict(assignment.split("=", 1) for assignment in assignments)
    return name, Path(tree).resolve(), env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("arms", nargs="+", help="name=tree[,VARIABLE=value...]")
    parser.add_argument("--workload", default="500 x 4 KiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default="/tmp/benchmark-compare.json")
    args = parser.parse_args()
    arms = [parse_arm(text) for text in args.arms]
    workload = {w.name: w for w in bench.FULL + bench.QUICK + bench.FAR}[args.workload]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in arms}
    with LocalStack() as stack, contextlib.ExitStack() as network:
        route = bench.Route.direct(stack)
        if workload.delay_ms:
            route = network.enter_context(bench.Relay(stack, workload.delay_ms)).route
        folder = bench.seed(stack.ssh.root, workload)
        for round_number in range(args.rounds):
            for name, tree, env in arms if round_number % 2 == 0 else arms[::-1]:
                bench.PROJECT = tree  # the daemon's working directory and dagster.yaml
                daemon_env = {**route.pipeline_env(), **env, "PYTHONPATH": str(tree)}
                outcome = bench.run_pipeline(stack, folder, uuid.uuid4().hex[:8], daemon_env)
                cpu = bench.cpu_ms_per_file([outcome], workload.files)
                results[name].append({**outcome, "cpu_ms_per_file": cpu})
                print(
                    f"{workload.name}  round {round_number + 1}  {name:<8} "
                    f"{outcome['seconds']:7.1f} s  runs {outcome['runs']} "
                    f"{outcome['runs_by_origin']}  "
                    f"CPU ms per file {bench.tool_cpu_ms_per_file([outcome], workload.files):.1f} "
                    + " ".join(f"{kind} {ms:.2f}" for kind, ms in cpu.items()),
                    flush=True,
                )
    summary = {}
    for name, rounds in results.items():
        cpu = bench.cpu_ms_per_file(rounds, workload.files)
        summary[name] = {
            "seconds": statistics.median(r["seconds"] for r in rounds),
            "from_first_tick": statistics.median(r["seconds_from_first_tick"] for r in rounds),
            "runs": [r["runs"] for r in rounds],
            "runs_requested": [r["runs_by_origin"].get("sensor request", 0) for r in rounds],
            "cpu_ms_per_file": bench.tool_cpu_ms_per_file(rounds, workload.files),
            **{f"cpu_ms_per_file {kind}": ms for kind, ms in cpu.items()},
        }
    print()
    bench.print_table(
        [{"arm": name, **row} for name, row in summary.items()],
        ["arm", *dict.fromkeys(k for row in summary.values() for k in row)],
    )
    Path(args.json).write_text(
        json.dumps({"workload": workload.name, "summary": summary, "raw": results}, indent=2)
    )
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
