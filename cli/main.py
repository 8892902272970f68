"""``ftaas``: the command line, and the one composition root that may import several packages.

Heavy modules (torch via defense, the API app) are imported inside the command that needs them,
so ``ftaas keys create`` stays fast and the API process never loads torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from core import migrate
from core.accounts import create_key, get_or_create_tenant
from core.alignments import alignment_progress
from core.catalog import BUILTIN_MODELS, ensure_builtin_models, is_builtin_ready, is_prepared
from core.config import Settings, get_settings
from core.db import session_factory, session_scope
from core.model_status import ModelStatus, set_model_status
from core.models import ApiKey, Job, JobEvent, Model
from core.private import private_dir, restrict_umask, write_private
from core.queue import (
    ALIGNMENT_QUEUE,
    ALL_QUEUES,
    MAINTENANCE_QUEUE,
    SCREENING_QUEUE,
    TRAINING_QUEUE,
)
from core.shipped import install_shipped

# What ``ftaas worker`` consumes by default: one GPU worker that takes every kind of job.
DEFAULT_WORKER_QUEUES = (TRAINING_QUEUE, ALIGNMENT_QUEUE, SCREENING_QUEUE)

console = Console(stderr=True)


def _migrate(settings: Settings) -> None:
    private_dir(settings.resolved_home)
    migrate.upgrade(settings.resolved_database_url)
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        ensure_builtin_models(session, settings.resolved_models_dir)


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.downgrade:
        migrate.downgrade(settings.resolved_database_url, args.downgrade)
        console.print(f"Downgraded the database to {args.downgrade}.")
        return 0
    _migrate(settings)
    console.print(f"Database at head: {settings.resolved_database_url}")
    # Production's one-shot `migrate` service registers the shipped adapter on the shared volume,
    # so the default model is served defended before any worker has aligned it.
    _install_shipped(settings, settings.default_model, settings.alignment_method)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    settings = get_settings()
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        key = create_key(
            session,
            tenant_name=args.tenant,
            admin=args.admin,
            secret=settings.resolved_key_secret(),
        )
    console.print(
        f"Created {'an admin' if args.admin else 'a'} key for tenant {args.tenant!r}. "
        "It is shown once; store it now."
    )
    print(key)
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    settings = get_settings()
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        rows = [(row, alignment_progress(session, row)) for row in session.query(Model)]
    table = Table("id", "kind", "base", "method", "status", "progress", "path")
    for row, progress in sorted(rows, key=lambda item: item[0].seq):
        table.add_row(
            row.id,
            row.kind,
            row.base_model or "",
            row.method or "",
            row.status,
            _progress_text(progress),
            row.path or "",
        )
    Console().print(table)
    return 0


def _progress_text(progress: dict[str, object] | None) -> str:
    """A pending alignment's ``step 120/1000 (12.0%), about 2.1 h left``."""
    if progress is None:
        return ""
    text = f"step {progress['step']}/{progress['total_steps'] or '?'} ({progress['percent']}%)"
    if progress.get("eta"):
        text += f", about {progress['eta']} left"
    return text if progress["job_status"] == "running" else f"{progress['job_status']}; {text}"


def cmd_models_prepare(args: argparse.Namespace) -> int:
    settings = get_settings()
    _prepare_builtin(settings, args.name)
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        ensure_builtin_models(session, settings.resolved_models_dir)
    _install_shipped(settings, args.name, settings.alignment_method)
    return 0


def cmd_models_register(args: argparse.Namespace) -> int:
    settings = get_settings()
    path = Path(args.path).resolve()
    if not is_prepared(path):
        console.print(f"[red]{path} has no config.json: not a Hugging Face model directory.[/red]")
        return 2
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        row = session.get(Model, args.name) or session.query(Model).filter_by(id=args.name).first()
        if row is None:
            session.add(
                Model(
                    id=args.name,
                    source="local",
                    path=str(path),
                    status="ready",
                    owned_by="provider",
                )
            )
        else:
            row.path, row.source = str(path), "local"
            set_model_status(row, ModelStatus.READY)
    console.print(f"Registered model {args.name!r} at {path}.")
    return 0


ADMIN_TENANT = "admin"


def _queue_alignment(
    settings: Settings, *, base: str, method: str, hyperparameters: dict[str, object]
) -> tuple[str, str, bool]:
    """Create (or find) the alignment of ``base`` and send it. Returns (job id, the estimate's
    text, whether a new job was created)."""
    from core.alignments import active_alignment, create_alignment_job
    from core.queue import make_celery, send_run_job

    factory = session_factory(settings.resolved_database_url)
    with session_scope(factory) as session:
        ensure_builtin_models(session, settings.resolved_models_dir)
        existing = active_alignment(session, base=base, method=method)
        tenant = get_or_create_tenant(session, ADMIN_TENANT)
        job = create_alignment_job(
            session,
            base=base,
            method=method,
            hyperparameters=hyperparameters,
            tenant_id=tenant.id,
            settings=settings,
        )
        created = existing is None
        if created:
            from core import jobs

            jobs.add_event(session, job, f"Created alignment job {job.id} from the command line.")
        job_id = job.id
        first = session.scalar(
            select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
        )
    if created:
        send_run_job(make_celery(settings), job_id, kind="alignment")
    return job_id, str(first or ""), created


def cmd_models_align(args: argparse.Namespace) -> int:
    settings = get_settings()
    hyperparameters: dict[str, object] = {}
    if args.steps is not None:
        hyperparameters["steps"] = args.steps
    try:
        job_id, estimate, created = _queue_alignment(
            settings, base=args.base, method=args.method, hyperparameters=hyperparameters
        )
    except ValueError as err:
        console.print(f"[red]{err}[/red]")
        return 2
    verb = "Queued" if created else "Already queued:"
    console.print(f"{verb} alignment job {job_id} ({args.method} on {args.base}). {estimate}")
    print(job_id)
    if not args.wait:
        return 0
    return _follow(settings, job_id)


def _follow(settings: Settings, job_id: str, *, poll_s: float = 1.0) -> int:
    """Show a job's progress (steps, latest event) until it ends; 0 if it succeeded."""
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from core.jobs import TERMINAL

    factory = session_factory(settings.resolved_database_url)
    seen = 0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(job_id, total=None)
        while True:
            with session_scope(factory) as session:
                job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
                status, step, total = job.status, job.step, job.total_steps
                error, model = job.error_message, job.fine_tuned_model
                events = list(
                    session.scalars(
                        select(JobEvent)
                        .where(JobEvent.job_id == job_id, JobEvent.seq > seen)
                        .order_by(JobEvent.seq)
                    )
                )
                lines = [(e.seq, e.message) for e in events]
            for seq, message in lines:
                seen = max(seen, seq)
                progress.console.print(f"  {message}")
            progress.update(task, description=f"{job_id} {status}", completed=step, total=total)
            if status in TERMINAL:
                break
            time.sleep(poll_s)
    if status == "succeeded":
        console.print(f"[green]Alignment succeeded: {model} is ready.[/green]")
        return 0
    console.print(f"[red]Alignment {status}: {error or ''}[/red]")
    return 1


def _install_shipped(settings: Settings, base: str, method: str) -> bool:
    """Register the project's shipped pre-aligned adapter for ``base`` (verified by SHA-256) when
    no aligned model is ready or pending. True when one now serves ``base``."""
    if not settings.use_shipped_adapters:
        return False
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        installed = install_shipped(
            session, base=base, method=method, models_dir=settings.resolved_models_dir
        )
    if installed.outcome == "registered":
        console.print(
            f"[bold]{installed.model_id} (the project's shipped pre-aligned adapter, SHA-256 "
            f"verified) now serves {base}.[/bold] Re-align at any time: "
            f"`ftaas models align --base {base} --method {method}`."
        )
    elif installed.outcome == "rejected":
        console.print(
            f"[yellow]The shipped adapter {installed.model_id} was not registered: "
            f"{installed.message}.[/yellow]"
        )
    return installed.outcome in ("registered", "present")


def _first_start_alignment(settings: Settings) -> None:
    """Serve the default model defended: the shipped pre-aligned adapter when there is one, else
    queue its alignment unless an aligned model for it is ready or pending."""
    from core.policy import aligned_model_id

    base, method = settings.default_model, settings.alignment_method
    if _install_shipped(settings, base, method):
        return
    if not settings.align_on_first_start:
        return
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        row = session.scalar(select(Model).where(Model.id == aligned_model_id(base, method)))
        status = row.status if row is not None else None
    if status in ("ready", "pending"):
        return
    job_id, estimate, _ = _queue_alignment(settings, base=base, method=method, hyperparameters={})
    console.print(
        f"[bold]First start: aligning {base} with {method} (job {job_id}).[/bold] {estimate} "
        f"User jobs on {base} wait for it; `ftaas models list` shows its status."
    )


def _prepare_builtin(settings: Settings, name: str) -> Path:
    from defense.modeling import prepare_builtin

    target = settings.resolved_models_dir / name
    if is_builtin_ready(target):
        return target
    with console.status(f"Preparing base model {name} into {target} (once; about 20 s)…"):
        path = prepare_builtin(name, settings.resolved_models_dir)
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        ensure_builtin_models(session, settings.resolved_models_dir)  # now `ready`
    console.print(f"Base model {name} ready at {path}.")
    return path


def _first_admin_key(settings: Settings) -> None:
    """Create an admin key on first start and save it (mode 0600) under FTAAS_HOME."""
    key_file = settings.resolved_home / "admin.key"
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        if session.query(ApiKey).filter_by(is_admin=True).first() is not None:
            if key_file.exists():
                console.print(f"Admin API key: saved in {key_file}")
            return
        key = create_key(
            session, tenant_name="admin", admin=True, secret=settings.resolved_key_secret()
        )
    write_private(key_file, key + "\n")  # 0600 from the first byte, atomically
    console.print(f"[bold]Admin API key (shown once, also saved in {key_file}):[/bold]\n{key}")


def _worker_argv(
    queues: Sequence[str] = DEFAULT_WORKER_QUEUES, concurrency: int = 1, beat: bool = False
) -> list[str]:
    """A Celery worker consuming ``queues`` (``training``, ``alignment``, ``screening``,
    ``maintenance``) with the ``solo`` pool (worker/celery_app.py: the job runs in the process
    that receives SIGTERM, so it is preempted cleanly; no process per task). ``beat`` adds the
    sweeper's schedule: run exactly one of those per deployment, on a worker that consumes
    ``maintenance``."""
    unknown = sorted(set(queues) - set(ALL_QUEUES))
    if unknown or not queues:
        raise ValueError(
            f"unknown queue(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(ALL_QUEUES)}"
        )
    name = "+".join(queues)
    argv = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--loglevel", "INFO", "--pool", "solo", "--concurrency", str(concurrency),
        "-Q", ",".join(queues), "--hostname", f"{name}@%h",
    ]  # fmt: skip
    return argv + (["--beat"] if beat else [])


def cmd_serve(args: argparse.Namespace) -> int:
    from cli.supervise import Supervisor, serve_children

    settings = get_settings()
    _migrate(settings)
    _first_admin_key(settings)
    if not args.no_prepare:
        _prepare_builtin(settings, settings.default_model)
    _first_start_alignment(settings)
    children = serve_children(args.host, args.port)
    supervisor = Supervisor(children, stop_timeout_s=settings.stop_timeout_s)
    console.print(
        f"API on http://{args.host}:{args.port}  (docs: http://{args.host}:{args.port}/docs); "
        "workers: training, alignment, screening + maintenance. Ctrl-C or SIGTERM stops them all "
        f"(within {settings.stop_timeout_s:.0f} s)."
    )
    return supervisor.run()


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from core.logs import configure_logging

    configure_logging(get_settings())
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:  # several API processes: their HTTP metrics are summed from this folder
        import shutil

        shutil.rmtree(metrics_dir, ignore_errors=True)  # samples of processes that are gone
        Path(metrics_dir).mkdir(parents=True)
    # log_config=None: uvicorn's loggers go through ours (JSON when FTAAS_LOG_FORMAT=json).
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    if args.maintenance:
        argv = _worker_argv([MAINTENANCE_QUEUE], args.concurrency, beat=True)
    else:
        queues = [q.strip() for q in args.queues.split(",") if q.strip()]
        try:
            argv = _worker_argv(queues, args.concurrency)
        except ValueError as err:
            console.print(f"[red]{err}[/red]")
            return 2
    os.execv(sys.executable, argv)


def build_parser() -> argparse.ArgumentParser:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="ftaas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "serve", help="embedded default: migrate, prepare the default model, API + one worker"
    )
    p.add_argument("--host", default=settings.api_host)
    p.add_argument("--port", type=int, default=settings.api_port)
    p.add_argument(
        "--no-prepare", action="store_true", help="do not prepare the default base model now"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("api", help="run the API server only")
    p.add_argument("--host", default=settings.api_host)
    p.add_argument("--port", type=int, default=settings.api_port)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run one training worker (one per GPU)")
    p.add_argument(
        "--maintenance",
        action="store_true",
        help="run the sweeper (maintenance queue + its schedule) instead of training; one per deployment",
    )
    p.add_argument(
        "--queues",
        default=",".join(DEFAULT_WORKER_QUEUES),
        help="comma-separated queues to consume (training, alignment, screening); a worker per "
        "queue keeps user jobs and screenings from waiting behind an alignment",
    )
    p.add_argument("--concurrency", type=int, default=1)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("migrate", help="upgrade the database schema (or --downgrade REV)")
    p.add_argument("--downgrade", metavar="REV")
    p.set_defaults(func=cmd_migrate)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True
    )
    p = keys.add_parser("create", help="create a key; prints it alone on the last line")
    p.add_argument("--tenant", required=True)
    p.add_argument("--admin", action="store_true")
    p.set_defaults(func=cmd_keys_create)

    models = sub.add_parser("models", help="base models").add_subparsers(
        dest="models_command", required=True
    )
    models.add_parser("list", help="list registered base models").set_defaults(func=cmd_models_list)
    p = models.add_parser("prepare", help="prepare a built-in model into the cache")
    p.add_argument("name", choices=sorted(BUILTIN_MODELS))
    p.set_defaults(func=cmd_models_prepare)
    p = models.add_parser("register", help="register a local Hugging Face model directory")
    p.add_argument("name")
    p.add_argument("path")
    p.set_defaults(func=cmd_models_register)
    p = models.add_parser(
        "align", help="queue the alignment (defense stage 1) of a base model; prints the job id"
    )
    p.add_argument("--base", required=True, help="a registered base model")
    p.add_argument("--method", required=True, choices=["antibody", "booster", "vaccine", "sft"])
    p.add_argument(
        "--steps", type=int, help=f"optimizer steps (default {settings.alignment_steps})"
    )
    p.add_argument("--wait", action="store_true", help="show progress until the job ends")
    p.set_defaults(func=cmd_models_align)
    return parser


def main(argv: list[str] | None = None) -> int:
    restrict_umask()  # FTAAS_HOME and all under it owner-only (core/private.py)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
