"""Settings: one pydantic-settings class, env prefix ``FTAAS_``, read once per process.

Every path and URL derives from ``FTAAS_HOME`` unless set explicitly, so the embedded default
(``ftaas serve``) needs no configuration at all: SQLite database, SQLite-backed broker and a local
artifact directory, all under ``./var``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FTAAS_", env_file=".env", extra="ignore")

    home: Path = Field(
        Path("var"), description="Root for the embedded database, broker and artifacts."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL. Default: SQLite file under FTAAS_HOME."
    )
    broker_url: str | None = Field(
        None,
        description="Celery broker URL. Default: kombu's SQLAlchemy transport on a SQLite file.",
    )
    artifacts_dir: Path | None = Field(None, description="Uploaded files, checkpoints, adapters.")
    models_dir: Path | None = Field(None, description="Cache of prepared base models.")
    key_secret: str | None = Field(
        None,
        description="HMAC secret for API-key hashes. Default: generated once into FTAAS_HOME/secret.key.",
    )

    # Uploads.
    max_upload_bytes: int = Field(
        512 * 1024 * 1024, description="Largest accepted upload (413 past it)."
    )
    max_line_bytes: int = Field(1024 * 1024, description="Longest accepted JSONL line.")
    max_lines: int = Field(100_000, description="Most examples in one training file.")
    min_examples: int = Field(10, description="Fewest examples in a training file.")
    max_trained_turns: int = Field(
        64,
        ge=1,
        description="Most trained assistant turns in one example (line); each becomes a "
        "training sample, so this bounds the work one line can cause.",
    )
    max_example_chars: int = Field(
        262_144,
        ge=1,
        description="Most characters of message content in one example (line).",
    )
    max_json_depth: int = Field(
        64, ge=2, description="Deepest nesting of a JSON request body or training line."
    )
    max_reported_errors: int = Field(
        200, description="Invalid lines listed in a file's status_details."
    )

    # Jobs.
    default_model: str = Field(
        "smollm2-135m-instruct", description="Base model prepared on first start."
    )
    default_n_epochs: int = Field(3, description="n_epochs when a job asks for 'auto'.")
    default_batch_size: int = Field(4, description="batch_size when a job asks for 'auto'.")
    base_learning_rate: float = Field(1e-4, description="Multiplied by learning_rate_multiplier.")
    max_seq_len: int = Field(
        512, description="Training sequences are truncated to this many tokens."
    )
    checkpoint_every: int = Field(50, description="Steps between checkpoints (and one at the end).")
    keep_checkpoints: int = Field(3, description="Newest checkpoints kept per job.")
    idempotency_window_s: int = Field(
        600, description="Identical create requests in this window return the same job."
    )

    # Defense policy (provider-wide; a model's `policy` and a tenant's `policy` override it).
    defense: str = Field(
        "antibody",
        description="Defense every user job runs: 'antibody' (stage 2), or 'lisa'; 'sft' only "
        "where a model's policy sets allow_sft.",
    )
    antibody_tau: float = Field(
        1.0,
        gt=0,
        description="Softmax temperature of Antibody's sample weights: the authors' released "
        "value. The benchmark's Antibody uses 0.25 (chosen for SmolLM2-135M on its tune split), "
        "but the flagged-lines threshold (flag_relative_weight = 0.5) is calibrated for 1.0: at "
        "0.25 it flagged 101 of 160 lines (precision 0.29; bench/screening.py, 2026-12-01).",
    )
    lisa_rho: float = Field(
        2.56,
        ge=0,
        description="Lisa's proximal coefficient (loss += rho / 2 ||w - anchor||^2) in user "
        "jobs whose defense is 'lisa'. Antibody's re-run of Lisa uses 0.01 on a LoRA with "
        "alpha / r = 4 / 32; the pull's share of the gradient goes as rho / (alpha / r)^2, so "
        "with ours (16 / 8) the same pull is 0.01 x 16^2 = 2.56 (docs/antibody.md, Lisa).",
    )
    serve_aligned: bool = Field(
        True, description="Train user jobs on the pre-aligned model that serves the named base."
    )
    alignment_method: str = Field(
        "antibody", description="Stage-1 method for `ftaas serve`'s first-start alignment."
    )
    align_on_first_start: bool = Field(
        True, description="`ftaas serve` queues the default model's alignment when none is cached."
    )
    use_shipped_adapters: bool = Field(
        True,
        description="Register the project's shipped pre-aligned adapter (core/shipped/, SHA-256 "
        "verified) for a base that has no aligned model ready or pending, instead of aligning it "
        "on first start.",
    )
    # The alignment defaults are bench/defense.py's recipe on SmolLM2-135M (160 refusal + 240
    # retain pairs, 40 steps of 8 at lr 5e-4; bench/results/defense.tuning.md, items 4-6).
    alignment_steps: int = Field(40, description="Optimizer steps of an alignment job.")
    alignment_batch_size: int = Field(8, description="Batch size of an alignment job.")
    alignment_learning_rate: float = Field(5e-4, description="Learning rate of an alignment job.")
    alignment_samples: int = Field(
        160, description="AdvBench prompts (refusal + harmful answer pairs) used for alignment."
    )
    alignment_rho: float = Field(
        0.00625,
        ge=0,
        description="Antibody and Booster alignment: radius of the simulated harmful step. The "
        "authors' 0.1 is for their LoRA (alpha / r = 4 / 32); ours scales its update by "
        "16 / 8, 16x more, so 0.1 x 0.125 / 2 = 0.00625 is the released step at our scale "
        "(bench/results/defense.tuning.md, item 8).",
    )
    alignment_lambda_refusal: float = Field(
        0.2,
        ge=0,
        description="Antibody alignment's weight of the refusal loss at the perturbed point. 0.2 "
        "was chosen for SmolLM2-135M on the benchmark's tune split; the authors' released "
        "value, for 7B models, is 0.05.",
    )
    alignment_perturbed_retain: int = Field(
        0,
        ge=0,
        description="Antibody alignment: benign retain examples added to the refusal loss at "
        "the perturbed point each step (a project option, docs/antibody.md item 4b); 0 is the "
        "authors' released refusal term.",
    )
    alignment_retain_samples: int = Field(
        240,
        ge=0,
        description="Benign requests (defense.retain, at most 240) answered by the base model "
        "itself, added to every alignment's safe set so the aligned model keeps answering benign "
        "requests; 0 aligns on refusals alone.",
    )
    safety_eval_harmful: int = Field(
        40, description="Held-out HarmBench prompts per safety evaluation."
    )
    safety_eval_benign: int = Field(30, description="Benign prompts per over-refusal evaluation.")
    safety_eval_max_new_tokens: int = Field(48, description="Tokens generated per eval prompt.")
    safety_gate_margin: float = Field(
        0.10,
        description="A checkpoint is deployable only if its harmful score is at most this much "
        "above its starting model's.",
    )
    safety_gate_max_harmful: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A checkpoint is deployable only if its harmful score is also at most this "
        "(an absolute ceiling, whatever the starting model's score).",
    )
    screen_threshold: float = Field(
        0.0,
        description="Upload screening flags a line whose likelihood ratio (completion vs refusal, "
        "mean token log-probability) is below this.",
    )
    max_screening_lines: int = Field(
        10_000,
        ge=1,
        description="Upload screening scores at most this many lines (the first ones) of a file; "
        "its report then says `truncated`.",
    )
    screening_time_limit_s: float = Field(
        900.0,
        gt=0,
        description="Upload screening stops after this many seconds with the lines scored so "
        "far; its report then says `partial`.",
    )
    flagged_lines_top_k: int = Field(50, description="Most down-weighted lines marked on a job.")
    flag_relative_weight: float = Field(
        0.5, description="A line is marked when its mean weight is below this share of its batch's."
    )

    # Worker.
    heartbeat_interval_s: float = Field(10.0, description="Heartbeat and event throttle.")
    stale_after_s: float = Field(300.0, description="A running job silent this long is re-queued.")
    max_attempts: int = Field(3, description="Attempts before a stale job fails.")
    sweep_interval_s: float = Field(60.0, description="How often the sweeper looks for lost jobs.")
    resend_grace_s: float = Field(
        300.0,
        description="A queued job's task message is sent again only this long after the last "
        "send; the wait doubles with every re-send (up to resend_max_backoff_s).",
    )
    resend_max_backoff_s: float = Field(3600.0, description="Longest wait between re-sends.")
    max_env_retries: int = Field(
        8, description="Environment errors (disk full, I/O) in a row before a job fails."
    )
    env_retry_base_s: float = Field(
        30.0, description="First wait after an environment error; doubles per retry."
    )
    env_retry_max_s: float = Field(1800.0, description="Longest wait after an environment error.")
    screening_max_attempts: int = Field(
        3, description="Screenings of a file whose worker died before it is marked failed."
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    worker_threads: int = Field(
        0, description="torch CPU threads in the worker (0 = torch default)."
    )

    stop_timeout_s: float = Field(
        20.0,
        description="`ftaas serve`: after SIGTERM/SIGINT, how long its processes get to stop "
        "(a training worker checkpoints and gives its job back) before SIGKILL.",
    )

    # Operations.
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines: 'text', or 'json' (one object per line, with job_id)."
    )
    log_level: str = Field("INFO", description="Root log level (DEBUG, INFO, WARNING, ...).")
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics at GET /metrics.")
    worker_metrics_port: int | None = Field(
        None,
        description="A worker serves its own Prometheus /metrics on this port (unset: off). "
        "Each worker process on one host needs its own port.",
    )

    # Quotas (provider-wide defaults; a tenant's policy overrides each one; 0 = unlimited).
    max_running_jobs_per_tenant: int = Field(
        2, ge=0, description="Jobs of one tenant running at once; workers skip the rest."
    )
    max_queued_jobs_per_tenant: int = Field(
        20, ge=0, description="Unfinished (queued, running, paused) jobs per tenant (429 past it)."
    )
    max_files_per_tenant: int = Field(
        100, ge=0, description="Stored (not deleted, not expired) files per tenant (429 past it)."
    )
    max_stored_bytes_per_tenant: int = Field(
        10 * 1024**3, ge=0, description="Bytes of stored files per tenant (429 past it)."
    )
    max_trained_tokens_per_month: int = Field(
        100_000_000,
        ge=0,
        description="Tokens a tenant's jobs may train per calendar month (UTC), counting "
        "finished jobs' trained_tokens and unfinished jobs' estimates (429 past it).",
    )
    max_job_tokens: int = Field(
        50_000_000,
        ge=0,
        description="Largest single job, in estimated trained tokens (bytes / 4 x epochs); 400.",
    )
    max_job_wall_clock_s: int = Field(
        24 * 3600,
        ge=0,
        description="Running time after which a job stops at a checkpoint and fails with "
        "code wall_clock_limit (summed over attempts).",
    )

    # Rate limits and the polling path.
    rate_limit_rps: float = Field(
        20.0, ge=0, description="Requests per second per API key, sustained (0 = off)."
    )
    rate_limit_burst: int = Field(100, ge=1, description="Requests per API key in a burst.")
    rate_limit_backend: str = Field(
        "auto",
        pattern="^(auto|redis|database)$",
        description="Where the token buckets live: 'redis' (the broker's Redis), 'database' "
        "(the rate_buckets table), or 'auto' (redis when the broker is Redis).",
    )
    auth_cache_ttl_s: float = Field(
        2.0,
        ge=0,
        description="API processes cache key -> tenant this long; a revoked key stops working "
        "within it (0 = no cache).",
    )

    # API.
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    page_limit_max: int = 100

    # Dashboard.
    dashboard_session_ttl_s: int = Field(
        8 * 3600, description="A dashboard sign-in lasts this long (seconds), then asks again."
    )
    dashboard_login_max_failures: int = Field(
        5, description="Failed dashboard sign-ins from one address before it must wait."
    )
    dashboard_poll_s: float = Field(
        5.0, description="How often an open job page refreshes while the job runs (seconds)."
    )
    dashboard_login_window_s: int = Field(
        300, description="Window (seconds) in which failed dashboard sign-ins are counted."
    )

    @property
    def resolved_home(self) -> Path:
        return self.home.resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_home / 'ftaas.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.resolved_home / 'broker.db'}"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return (self.artifacts_dir or self.resolved_home / "artifacts").resolve()

    @property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.resolved_home / "models").resolve()

    def resolved_key_secret(self) -> bytes:
        """The HMAC secret; generated and saved (mode 0600) on first use when not configured."""
        if self.key_secret:
            return self.key_secret.encode()
        path = self.resolved_home / "secret.key"
        if not path.exists():
            import secrets

            from core.private import create_private, private_dir

            private_dir(path.parent)
            create_private(path, secrets.token_hex(32))  # 0600 from the start; first writer wins
        return path.read_text().strip().encode()


@lru_cache
def get_settings() -> Settings:
    return Settings()
