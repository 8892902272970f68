"""Turn a finished alignment job into a shipped adapter (core/shipped/<aligned id>/).

Usage (on the machine that ran the alignment, with its FTAAS_HOME):

    FTAAS_HOME=/path/to/home .venv/bin/python scripts/ship_aligned.py smollm2-135m-instruct-antibody

It copies the adapter's two PEFT files (the tokenizer is the base model's), and writes
``manifest.json`` with the model row's lineage and safety scores, the alignment job's provenance
(id, timings, pace, machine, code revision) and the SHA-256 of every file and of the prepared base
model's weights, which ``core.shipped.install_shipped`` verifies before registering it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from core.catalog import BUILD_RECORD
from core.config import get_settings
from core.db import session_factory, session_scope
from core.models import Job, JobEvent, Model
from core.shipped import BASE_WEIGHTS, MANIFEST, SHIPPED_DIR, sha256_file

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the aligned model id, e.g. smollm2-135m-instruct-antibody")
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR)
    args = parser.parse_args()
    settings = get_settings()
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        row = session.scalar(select(Model).where(Model.id == args.model))
        if row is None or row.status != "ready" or not row.adapter_path:
            print(f"{args.model} is not a ready aligned model in {settings.resolved_home}")
            return 1
        job = session.scalar(select(Job).where(Job.id == row.alignment_job_id))
        assert job is not None, "the aligned model names no alignment job"
        steps = [
            e.data
            for e in session.scalars(
                select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.seq)
            )
            if e.type == "metrics" and e.data and "step" in e.data
        ]
        base, method = str(row.base_model), str(row.method)
        lineage, safety = dict(row.lineage), dict(row.safety or {})
        adapter = Path(row.adapter_path)
        provenance = {
            "alignment_job": job.id,
            "attempts": job.attempt,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "wall_s": (job.finished_at or 0) - (job.started_at or 0),
            "steps_logged": len(steps),
            "machine": {
                "cpu": _cpu_name(),
                "python": platform.python_version(),
                "torch": __import__("importlib.metadata").metadata.version("torch"),
            },
            "code_revision": _revision(),
        }
    base_dir = settings.resolved_models_dir / base
    target = args.out / args.model
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in ADAPTER_FILES:
        shutil.copyfile(adapter / name, target / name)
    build = json.loads((base_dir / BUILD_RECORD).read_text())
    manifest = {
        "model": args.model,
        "base": base,
        "method": method,
        "files": {name: sha256_file(target / name) for name in ADAPTER_FILES},
        "base_weights_sha256": sha256_file(base_dir / BASE_WEIGHTS),
        "base_build": build,
        "lineage": {**lineage, "provenance": provenance},
        "safety": safety,
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote {target} ({sum(f.stat().st_size for f in target.iterdir())} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
