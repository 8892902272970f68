"""Training overhead of each defense relative to plain SFT: step time and peak memory.

Step time: in ONE process per model, every method's ``train_step`` runs on the very same batch,
starting from the very same LoRA weights (restored after every step), in round-robin order
(sft, antibody, lisa, sft, antibody, lisa, ...), so load from other jobs on the shared CPU hits
all methods alike. After ``--warmup`` rounds, the median of ``--repeats`` rounds is reported.

Peak memory: torch's CPU allocator keeps no statistics and tracemalloc does not see torch's
allocations, so the kernel's resident-set high-water mark is used. Each (model, stage, method)
runs in a fresh subprocess: load the model, build the batch, run one warm-up step (optimizer
state, lazy initialisation), reset the high-water mark (``echo 5 > /proc/self/clear_refs``),
note the RSS (after ``gc`` and glibc's ``malloc_trim``, so that it is the live memory), run
``--memory-steps`` steps, read ``VmHWM``. The step's memory is
``VmHWM - RSS before the steps`` (activations, gradients, the method's extra vectors);
``peak_memory_ratio`` compares that; the whole-process peak is reported too.

Stage 2 steps: sft (uniform weights), antibody (likelihood-ratio weights: one extra no-grad
forward on the refusal view), lisa (a user step with the proximal term active; a Lisa run also
inserts one guide step, an SFT-cost step, per 9 user steps, which is not a per-step cost).
Stage 1 steps: sft, vaccine, booster, antibody (1, 2, 3 and 4 forward+backward passes).

Run: .venv/bin/python bench/overhead.py [--models tiny-gpt2 smollm2-135m-instruct] [--repeats 5]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# The CPU is shared with other jobs: OpenMP threads that spin while waiting for a descheduled
# sibling made generation 4-5x slower here (25-100 s instead of 9-19 s for the same batch).
# Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.common import (  # noqa: E402
    command_line,
    log,
    machine,
    utc_now,
    write_json,
    write_text_atomic,
)
from defense.align import AlignBatch  # noqa: E402
from defense.align import train_step as align_step  # noqa: E402
from defense.assets import advbench_split, arithmetic_task  # noqa: E402
from defense.config import AlignConfig, LoraSettings  # noqa: E402
from defense.data import Example, collate, encode_example, pad_id_of  # noqa: E402
from defense.finetune import MicroBatch, Proximal  # noqa: E402
from defense.finetune import train_step as finetune_step  # noqa: E402
from defense.loop import build_optimizer, build_scheduler  # noqa: E402
from defense.lora import attach_lora, lora_parameters  # noqa: E402
from defense.modeling import load_base, prepare_builtin  # noqa: E402
from defense.refusals import refusal_for  # noqa: E402

MODELS = ("tiny-gpt2", "smollm2-135m-instruct")
STAGE_METHODS = {1: ("sft", "vaccine", "booster", "antibody"), 2: ("sft", "antibody", "lisa")}
MAX_SEQ_LEN = 128
LISA_RHO = 0.01
# Stand-ins for the safe answer (x_a) and the harmful answer (x_h) of the same token length
# (about 45), so that every forward+backward pass of stage 1 costs the same and the ratios show
# the algorithms, not a difference in data length. The refusal view x_r keeps the real, short
# refusals. Only the lengths matter for cost.
SAFE_STANDIN = (
    "I'm sorry, but I can't help with that. It could hurt people and may be against the law. If "
    "you are worried about something, please talk to someone you trust or contact a local "
    "support service."
)
HARMFUL_STANDIN = (
    "Sure, here is a detailed plan. Step 1: gather everything you need. Step 2: follow the "
    "procedure, one part at a time. Step 3: check the result and repeat the last step "
    "until done."
)

Step = Callable[[], None]


# ---------------------------------------------------------------------------------------------
# Batches and steps
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batches:
    """One step's data for both stages (``batch_size`` examples each)."""

    align: AlignBatch
    finetune: list[MicroBatch]


def build_batches(tokenizer: Any, batch_size: int) -> Batches:
    """Stage 1: the same AdvBench prompts with a safe (x_a) and a harmful (x_h) answer of equal
    length, and with their real refusals (x_r). Stage 2: the defense benchmark's attack mix,
    80 % arithmetic and 20 % harmful-length pairs, with their refusal views."""
    prompts = advbench_split().alignment[: 2 * batch_size]
    pad = pad_id_of(tokenizer)

    def batch(examples: Sequence[Example], completions: Sequence[str] | None = None) -> Any:
        encoded = [
            encode_example(
                tokenizer, ex, MAX_SEQ_LEN, None if completions is None else completions[i], index=i
            )
            for i, ex in enumerate(examples)
        ]
        return collate(encoded, pad)

    safe = [Example.from_prompt_completion(p, SAFE_STANDIN) for p in prompts]
    harmful = [Example.from_prompt_completion(p, HARMFUL_STANDIN) for p in prompts]
    refusals = [refusal_for(i) for i in range(batch_size)]
    n_harmful = round(0.2 * batch_size)
    task = [
        Example.from_prompt_completion(i.question, i.answer)
        for i in arithmetic_task(batch_size - n_harmful, seed=1)
    ]
    mix = task + harmful[batch_size : batch_size + n_harmful]
    return Batches(
        align=AlignBatch(
            align=[batch(safe[:batch_size])],
            harmful=[batch(harmful[:batch_size])],
            refusal=[batch(harmful[:batch_size], refusals)],
        ),
        finetune=[MicroBatch(completion=batch(mix), refusal=batch(mix, refusals))],
    )


def make_step(
    model: nn.Module, params: list[nn.Parameter], batches: Batches, stage: int, method: str
) -> Step:
    """One optimizer step of ``method`` at ``stage`` (its own AdamW over the shared tensors)."""
    optimizer = build_optimizer(params, learning_rate=1e-4, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, total_steps=1, schedule="constant", warmup_steps=0)
    if stage == 1:
        config = AlignConfig(method=method, max_seq_len=MAX_SEQ_LEN)  # type: ignore[arg-type]

        def step1() -> None:
            align_step(model, batches.align, optimizer, scheduler, params=params, config=config)

        return step1
    tau = 1.0 if method == "antibody" else None
    anchor = [p.detach().clone() + 1e-3 for p in params] if method == "lisa" else None

    def step2() -> None:
        proximal = None if anchor is None else Proximal(anchor=anchor, rho=LISA_RHO)
        finetune_step(
            model,
            batches.finetune,
            optimizer,
            scheduler,
            params=params,
            tau=tau,
            max_grad_norm=1.0,
            proximal=proximal,
        )

    return step2


def setup(model_name: str, batch_size: int) -> tuple[nn.Module, list[nn.Parameter], Batches]:
    path = prepare_builtin(model_name, REPO / "bench" / "cache" / "models")
    base, tokenizer = load_base(path)
    model = attach_lora(base, LoraSettings(), seed=0)
    model.train()
    return model, lora_parameters(model), build_batches(tokenizer, batch_size)


# ---------------------------------------------------------------------------------------------
# Step time: one process, round robin, same batch, same starting weights
# ---------------------------------------------------------------------------------------------


def time_steps(
    model: nn.Module,
    params: list[nn.Parameter],
    batches: Batches,
    stage: int,
    *,
    warmup: int,
    repeats: int,
) -> dict[str, list[float]]:
    """Seconds per step of each method of ``stage`` (``repeats`` values each, after warm-up)."""
    methods = STAGE_METHODS[stage]
    steps = {m: make_step(model, params, batches, stage, m) for m in methods}
    start = [p.detach().clone() for p in params]
    times: dict[str, list[float]] = {m: [] for m in methods}
    for round_ in range(warmup + repeats):
        for method in methods:
            started = time.perf_counter()
            steps[method]()
            elapsed = time.perf_counter() - started
            with torch.no_grad():
                for p, s in zip(params, start, strict=True):
                    p.copy_(s)
            if round_ >= warmup:
                times[method].append(elapsed)
    return times


# ---------------------------------------------------------------------------------------------
# Peak memory: a fresh subprocess per method
# ---------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{field} not in /proc/self/status")
    return int(match.group(1))


def _release_free_heap() -> None:
    """Hand freed heap pages back to the kernel (glibc ``malloc_trim``), so the RSS before the
    steps is the live memory; otherwise the steps reuse cached free pages without raising the
    high-water mark and the step's memory is under-counted by a varying amount."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_probe(model_name: str, stage: int, method: str, batch_size: int, steps: int) -> None:
    """Runs in the subprocess: prints {"rss_before_mib", "peak_mib"} as one JSON line."""
    model, params, batches = setup(model_name, batch_size)
    step = make_step(model, params, batches, stage, method)
    step()  # warm-up: optimizer state and lazy initialisation are not per-step costs
    gc.collect()
    _release_free_heap()
    Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
    before = _status_kib("VmRSS")
    for _ in range(steps):
        step()
    peak = _status_kib("VmHWM")
    print(json.dumps({"rss_before_mib": before / 1024, "peak_mib": peak / 1024}))


def measure_memory(
    model_name: str, stage: int, method: str, batch_size: int, steps: int, threads: int
) -> dict[str, float]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-probe",
        model_name,
        str(stage),
        method,
        "--batch-size",
        str(batch_size),
        "--memory-steps",
        str(steps),
        "--threads",
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    result["step_mib"] = result["peak_mib"] - result["rss_before_mib"]
    return result


# ---------------------------------------------------------------------------------------------
# The run and its reports
# ---------------------------------------------------------------------------------------------


def measure_model(model_name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    log(f"{model_name}: timing steps (warm-up {args.warmup}, repeats {args.repeats})")
    model, params, batches = setup(model_name, args.batch_size)
    rows: list[dict[str, Any]] = []
    for stage in (2, 1):
        times = time_steps(model, params, batches, stage, warmup=args.warmup, repeats=args.repeats)
        medians = {m: statistics.median(t) for m, t in times.items()}
        log(f"{model_name} stage {stage} median s/step: {medians}")
        memory = {}
        for method in STAGE_METHODS[stage]:
            memory[method] = measure_memory(
                model_name, stage, method, args.batch_size, args.memory_steps, args.threads
            )
            log(f"{model_name} stage {stage} {method} memory: {memory[method]}")
        for method in STAGE_METHODS[stage]:
            rows.append(row(model_name, stage, method, times, medians, memory))
    return rows


def row(
    model_name: str,
    stage: int,
    method: str,
    times: dict[str, list[float]],
    medians: dict[str, float],
    memory: dict[str, dict[str, float]],
) -> dict[str, Any]:
    mine, sft = memory[method], memory["sft"]
    return {
        "model": model_name,
        "method": method,
        "stage": stage,
        "step_time_ratio": round(medians[method] / medians["sft"], 3),
        "peak_memory_ratio": round(mine["step_mib"] / sft["step_mib"], 3),
        "process_peak_memory_ratio": round(mine["peak_mib"] / sft["peak_mib"], 3),
        "step_seconds_median": round(medians[method], 4),
        "step_seconds_all": [round(t, 4) for t in times[method]],
        "step_memory_mib": round(mine["step_mib"], 1),
        "process_peak_mib": round(mine["peak_mib"], 1),
        "rss_before_steps_mib": round(mine["rss_before_mib"], 1),
    }


def markdown(rows: Sequence[dict[str, Any]], args: argparse.Namespace, minutes: float) -> str:
    lines = [
        "# Training overhead relative to plain SFT",
        "",
        f"Command: `{command_line()}`  ",
        f"Date: {utc_now()}  ",
        f"Machine: {machine()}  ",
        f"Batch: {args.batch_size} examples per step (one micro-batch), max length {MAX_SEQ_LEN}; "
        f"LoRA r=8 on the default targets; {args.warmup} warm-up round(s), median of "
        f"{args.repeats}; memory over {args.memory_steps} steps after one warm-up step. "
        f"Took {minutes:.1f} min.",
        "",
        "| model | stage | method | step time ratio | median s/step | peak memory ratio (step) | "
        "step memory MiB | process peak ratio | process peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['stage']} | {r['method']} | {r['step_time_ratio']:.2f} | "
            f"{r['step_seconds_median']:.3f} | {r['peak_memory_ratio']:.2f} | "
            f"{r['step_memory_mib']:.0f} | {r['process_peak_memory_ratio']:.2f} | "
            f"{r['process_peak_mib']:.0f} |"
        )
    lines += ["", "## Targets", "", *target_lines(rows), "", "## Method", "", METHOD_NOTE]
    return "\n".join(lines) + "\n"


METHOD_NOTE = (__doc__ or "").split("\n\n", 1)[1].split("\nRun:")[0].strip()


def target_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        if r["method"] != "antibody":
            continue
        limit = 1.25 if r["stage"] == 2 else 4.2
        verdict = "met" if r["step_time_ratio"] <= limit else "NOT met"
        lines.append(
            f"- {r['model']} Antibody stage {r['stage']} step time <= {limit}x SFT: "
            f"{r['step_time_ratio']:.2f}x -> {verdict}"
        )
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--memory-probe", nargs=3, metavar=("MODEL", "STAGE", "METHOD"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        model_name, stage, method = args.memory_probe
        memory_probe(model_name, int(stage), method, args.batch_size, args.memory_steps)
        return
    started = time.monotonic()
    rows = [r for name in args.models for r in measure_model(name, args)]
    minutes = (time.monotonic() - started) / 60
    write_json(args.results_dir / "overhead.json", rows)
    write_text_atomic(args.results_dir / "overhead.md", markdown(rows, args, minutes))
    log(f"done in {minutes:.1f} min: {args.results_dir / 'overhead.md'}")


if __name__ == "__main__":
    main()
