"""Repeat the fault-injection scenarios (bench/fault_harness.py) and report what survived.

    .venv/bin/python bench/faults.py            # 20 kill -9, 5 broker and 2 database restarts,
                                                # 2 of each other scenario
    .venv/bin/python bench/faults.py --smoke    # 2 kill -9 and 1 of each other scenario

Writes ``bench/results/faults.md`` and ``bench/results/faults.json`` (``faults.smoke.*`` with
``--smoke``): one entry per scenario, ``{"scenario", "trials", "survived", "lost",
"max_steps_redone"}``. A trial survives when the job succeeded with an adapter bit-identical to
an uninterrupted run's, trained no step twice beyond one checkpoint interval per interruption,
and wrote no event twice; ``lost`` counts the others. Needs root (tmpfs, runuser), redis-server
and the PostgreSQL server binaries. Every trial runs one tiny-gpt2 job; the full run takes about
an hour on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import command_line  # noqa: E402
from bench.fault_harness import SCENARIOS, Harness, Outcome, ScenarioFailed  # noqa: E402

FULL = {
    "kill9": 20,
    "sigterm": 2,
    "broker_restart": 5,
    "db_restart": 2,
    "disk_full": 2,
    "slow_eval": 2,
}
SMOKE = {"kill9": 2, **{s: 1 for s in SCENARIOS if s != "kill9"}}


def run(trials: dict[str, int], seed: int) -> tuple[list[dict[str, object]], list[Outcome], float]:
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    with Harness(Path(tempfile.mkdtemp(prefix="ftaas-faults-"))) as harness:
        harness.reference()
        for scenario, n in trials.items():
            for trial in range(n):
                try:
                    outcome = harness.run(scenario, rng)
                except ScenarioFailed as err:
                    outcome = Outcome(scenario, "", False, 0, 1, [str(err)])
                outcomes.append(outcome)
                state = "survived" if outcome.survived else f"LOST: {outcome.problems}"
                print(f"{scenario} {trial + 1}/{n}: {outcome.job_id} {state}", flush=True)
        reference_s = harness.reference_seconds
    rows = []
    for scenario in trials:
        mine = [o for o in outcomes if o.scenario == scenario]
        rows.append(
            {
                "scenario": scenario,
                "trials": len(mine),
                "survived": sum(o.survived for o in mine),
                "lost": sum(not o.survived for o in mine),
                "max_steps_redone": max((o.steps_redone for o in mine), default=0),
            }
        )
    return rows, outcomes, reference_s


def write(
    rows: list[dict[str, object]], outcomes: list[Outcome], reference_s: float, stem: str
) -> None:
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# Fault injection",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Jobs: tiny-gpt2, 10 lines, batch 5, 3 epochs (6 steps, a checkpoint every 2); "
        f"uninterrupted run {reference_s:.0f} s.",
        "",
        "| scenario | trials | survived | lost | max steps redone |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['scenario']} | {r['trials']} | {r['survived']} | {r['lost']} | "
        f"{r['max_steps_redone']} |"
        for r in rows
    ]
    lost = [o for o in outcomes if not o.survived]
    if lost:
        lines += ["", "## Lost trials", ""]
        lines += [f"- {o.scenario} {o.job_id}: {'; '.join(o.problems)}" for o in lost]
    (results / f"{stem}.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="few trials; writes faults.smoke.*")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument(
        "--only", choices=SCENARIOS, action="append", help="run only these scenarios"
    )
    args = parser.parse_args()
    trials = dict(SMOKE if args.smoke else FULL)
    if args.only:
        trials = {s: n for s, n in trials.items() if s in args.only}
    started = time.monotonic()
    rows, outcomes, reference_s = run(trials, args.seed)
    write(rows, outcomes, reference_s, "faults.smoke" if args.smoke else "faults")
    print(json.dumps(rows, indent=2))
    print(f"{time.monotonic() - started:.0f} s")
    return 0 if all(r["lost"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
