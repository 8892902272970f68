"""A real run (tiny-gpt2, in-process runner) past its tenant's wall-clock limit: it stops at a
checkpoint and the job fails with wall_clock_limit, its checkpoints kept."""

from __future__ import annotations

import io

import httpx
import pytest
from openai import OpenAI

from core.config import Settings
from tests.worker.conftest import Keys
from tests.worker.test_end_to_end import _training_file
from worker import runner

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_job_stops_at_a_checkpoint_at_its_wall_clock_limit(
    live_api: str, keys: Keys, service_settings: Settings
) -> None:
    root = live_api.removesuffix("/v1")
    patched = httpx.patch(
        f"{root}/admin/tenants/acme",
        headers={"Authorization": f"Bearer {keys.admin}"},
        json={"policy": {"max_job_wall_clock_s": 1}},
    )
    assert patched.status_code == 200, patched.text
    client = OpenAI(base_url=live_api, api_key=keys.user, max_retries=0)
    uploaded = client.files.create(
        file=("train.jsonl", io.BytesIO(_training_file(20))), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model="tiny-gpt2",
        training_file=uploaded.id,
        hyperparameters={"n_epochs": 20, "batch_size": 1},
    )
    # Loading the model and the starting safety evaluation alone take over 1 s of running time.
    runner.run_job(job.id, settings=service_settings, worker_id="w", send=lambda _id: None)

    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "failed" and done.error is not None
    assert done.error.code == "wall_clock_limit", done.error
    assert "wall-clock limit of 1 s" in done.error.message
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number < 20 * 20  # stopped early, checkpointed
