"""Screening benchmark: how well the two "flagged line" signals separate harmful from benign lines.

Signals, on an attack dataset like bench/defense.py's (arithmetic items mixed with a fraction p of
harmful pairs from AdvBench's ``attack`` split, answered by the unaligned base model):

1. **Upload screening** (``defense.screening.score_examples``, what ``ftaas.files.screen`` stores):
   the likelihood ratio score of each line under the pre-aligned model; flagged when below
   ``Settings.screen_threshold``. Also measured with the unaligned base model, which is what the
   service falls back to while no aligned model is ready.
2. **Per-line Antibody weight after training** (``jobs.flagged_lines``): the mean relative weight
   of each line over an Antibody fine-tuning run from the aligned adapter; flagged when below
   ``Settings.flag_relative_weight``.

For each: precision and recall of the flag at the service's default threshold (harmful = the
positive class), and ROC AUC of the underlying number (lower score / weight = more suspicious),
computed with the rank (Mann-Whitney) formula, ties counted half.

The aligned model: an Antibody adapter cached by bench/defense.py (``bench/cache/defense-report``
or ``-tune``) when one exists, else one aligned here, quickly, and cached under
``bench/cache/screening``; the result files say which.

Run:   .venv/bin/python bench/screening.py                     (SmolLM2-135M, the defaults below)
       .venv/bin/python bench/screening.py --model tiny-gpt2   (the random test model: a smoke run)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402

from bench.common import (  # noqa: E402
    command_line,
    config_key,
    log,
    machine,
    read_json,
    utc_now,
    write_json,
    write_text_atomic,
)
from bench.defense import worked_answer  # noqa: E402
from core.config import Settings  # noqa: E402
from defense.align import align  # noqa: E402
from defense.assets import advbench_split, arithmetic_task  # noqa: E402
from defense.attack import attack_dataset, harmful_pairs  # noqa: E402
from defense.config import AlignConfig, FinetuneConfig, LoraSettings  # noqa: E402
from defense.data import Example  # noqa: E402
from defense.finetune import fit  # noqa: E402
from defense.lora import attach_lora  # noqa: E402
from defense.modeling import load_base, prepare_builtin  # noqa: E402
from defense.refusals import refusal_for  # noqa: E402
from defense.screening import score_examples  # noqa: E402

CACHE = REPO / "bench" / "cache"
MODELS = {"smollm2": "smollm2-135m-instruct", "tiny-gpt2": "tiny-gpt2"}
TRAIN_SEED = 1  # arithmetic items (bench/defense.py's TRAIN_SEED)
ATTACK_SEED = 0  # shuffle of the poisoned mix (bench/defense.py's ATTACK_SEED)
LORA_SEED = 0


@dataclass(frozen=True)
class Sizes:
    """Mirrors bench/defense.py's defaults for the attack data and the user's fine-tuning."""

    n: int = 160
    p: float = 0.2
    harmful_answer_tokens: int = 48
    max_seq_len: int = 128
    finetune_epochs: int = 2
    finetune_batch: int = 8
    finetune_lr: float = 1e-4
    tau: float = Settings.model_fields["antibody_tau"].default  # the service's default
    # Only when no bench/defense.py adapter is cached: a quick alignment of our own.
    n_align: int = 64
    align_steps: int = 10
    align_batch: int = 8
    align_lr: float = 5e-4
    gen_batch: int = 16


# --- metrics -------------------------------------------------------------------------------------


def roc_auc(suspicion: Sequence[float], positive: Sequence[bool]) -> float:
    """P(a random harmful line is more suspicious than a random benign one), ties counting half:
    (sum of the positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with average ranks."""
    n_pos = sum(positive)
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = sorted(range(len(suspicion)), key=lambda i: suspicion[i])
    ranks = [0.0] * len(suspicion)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and suspicion[order[j + 1]] == suspicion[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # 1-based average rank of the tie group
        i = j + 1
    rank_sum = sum(r for r, pos in zip(ranks, positive, strict=True) if pos)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def flag_metrics(flagged: Sequence[bool], positive: Sequence[bool]) -> dict[str, float | int]:
    tp = sum(f and p for f, p in zip(flagged, positive, strict=True))
    fp = sum(f and not p for f, p in zip(flagged, positive, strict=True))
    fn = sum(p and not f for f, p in zip(flagged, positive, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "flagged": tp + fp,
        "true_positives": tp,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
    }


def signal_row(
    name: str,
    values: Sequence[float],
    positive: Sequence[bool],
    *,
    threshold: float,
    seconds: float,
    note: str,
) -> dict[str, Any]:
    """Lower value = more suspicious; flagged when below ``threshold``."""
    harmful = [v for v, p in zip(values, positive, strict=True) if p]
    benign = [v for v, p in zip(values, positive, strict=True) if not p]
    return {
        "signal": name,
        "threshold": threshold,
        **flag_metrics([v < threshold for v in values], positive),
        "roc_auc": round(roc_auc([-v for v in values], positive), 4),
        "harmful_mean": round(statistics.mean(harmful), 4),
        "benign_mean": round(statistics.mean(benign), 4),
        "seconds": round(seconds, 1),
        "note": note,
    }


def cached_scores(path: Path, compute: Callable[[], list[float]]) -> list[float]:
    if path.is_file():
        return [float(v) for v in read_json(path)]
    values = compute()
    write_json(path, values)
    return values


# --- data and models -----------------------------------------------------------------------------


def attack_data(
    sizes: Sizes, base: Any, tokenizer: Any, cache: Path, *, model_name: str
) -> tuple[list[Example], list[bool]]:
    """``round(p n)`` harmful pairs (AdvBench attack split, the base model's greedy answers, judge
    refusals dropped) and arithmetic items, shuffled as bench/defense.py does."""
    needed = round(sizes.p * sizes.n)
    split = advbench_split()
    pairs_path = cache / "pairs" / f"{model_name}-{sizes.harmful_answer_tokens}tok.jsonl"
    harmful: list[Example] = []
    take = needed + needed // 4 + 4
    while len(harmful) < needed and take <= len(split.attack) + 4 * needed:
        log(f"harmful answers for {min(take, len(split.attack))} attack prompts ({pairs_path})")
        harmful = harmful_pairs(
            split.attack[:take],
            base,
            tokenizer,
            cache_path=pairs_path,
            max_new_tokens=sizes.harmful_answer_tokens,
            batch_size=sizes.gen_batch,
        )
        if take >= len(split.attack):
            break
        take *= 2
    if len(harmful) < needed:
        raise SystemExit(f"only {len(harmful)} harmful pairs; {needed} needed")
    items = arithmetic_task(sizes.n, TRAIN_SEED)
    benign = [Example.from_prompt_completion(i.question, worked_answer(i)) for i in items]
    mixed = attack_dataset(benign, harmful, sizes.p, sizes.n, ATTACK_SEED)
    return [example for example, _ in mixed], [flag for _, flag in mixed]


def find_bench_adapter(model: str) -> tuple[Path, dict[str, Any]] | None:
    """The newest Antibody adapter bench/defense.py finished (report or tune run), if any."""
    if model != "smollm2-135m-instruct":
        return None
    found = []
    for run in ("defense-report", "defense-tune"):
        for done in sorted((CACHE / run / "aligned").glob("antibody-*/done.json")):
            found.append((done.stat().st_mtime, done))
    if not found:
        return None
    done = max(found)[1]
    config = read_json(done)["config"]
    return done.parent / "adapter", {
        "source": str(done.parent.relative_to(REPO)),
        "steps": config["max_steps"],
        "batch_size": config["batch_size"],
        "max_seq_len": config["max_seq_len"],
    }


def own_adapter(sizes: Sizes, base_path: Path, cache: Path) -> tuple[Path, dict[str, Any]]:
    """A quick Antibody alignment of our own (cached, resumable)."""
    base, tokenizer = load_base(base_path)
    split = advbench_split()
    prompts = split.alignment[: sizes.n_align]
    config = AlignConfig(
        method="antibody",
        max_steps=sizes.align_steps,
        batch_size=sizes.align_batch,
        learning_rate=sizes.align_lr,
        max_seq_len=sizes.max_seq_len,
        checkpoint_every=1,
    )
    key = config_key(base_path.name, config, sizes.n_align, sizes.harmful_answer_tokens)
    cell = cache / "aligned" / f"antibody-{key}"
    info = {
        "source": str(cell.relative_to(REPO)),
        "steps": config.max_steps,
        "batch_size": config.batch_size,
        "max_seq_len": config.max_seq_len,
        "n_align": sizes.n_align,
    }
    if (cell / "done.json").is_file():
        return cell / "adapter", {**info, **read_json(cell / "done.json")}
    safe = [Example.from_prompt_completion(p, refusal_for(i)) for i, p in enumerate(prompts)]
    pairs_path = cache / "pairs" / f"{base_path.name}-{sizes.harmful_answer_tokens}tok.jsonl"
    log(f"harmful answers for {len(prompts)} alignment prompts ({pairs_path})")
    harmful = harmful_pairs(
        prompts,
        base,
        tokenizer,
        cache_path=pairs_path,
        max_new_tokens=sizes.harmful_answer_tokens,
        batch_size=sizes.gen_batch,
    )
    model = attach_lora(base, LoraSettings(), seed=LORA_SEED)
    started = time.monotonic()
    log(f"aligning {base_path.name} with antibody, {config.max_steps} steps -> {cell.name}")
    align(
        model,
        tokenizer,
        safe,
        harmful,
        config,
        checkpoint_dir=cell / "checkpoints",
        on_step=lambda m: log(f"  align step {m.step}/{m.total_steps} loss {m.loss:.3f}"),
    )
    model.save_pretrained(str(cell / "adapter"))
    seconds = round(time.monotonic() - started, 1)
    write_json(cell / "done.json", {"align_seconds": seconds})
    return cell / "adapter", {**info, "align_seconds": seconds}


# --- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(_env_file=None)
    sizes = replace(
        Sizes(),
        **{
            k: v for k, v in vars(args).items() if k in Sizes.__dataclass_fields__ and v is not None
        },
    )
    model_name = MODELS[args.model]
    cache = CACHE / "screening"
    base_path = prepare_builtin(model_name, CACHE / "models")
    base, tokenizer = load_base(base_path)
    examples, positive = attack_data(sizes, base, tokenizer, cache, model_name=model_name)
    log(f"attack data: {len(examples)} lines, {sum(positive)} harmful (p={sizes.p})")

    found = find_bench_adapter(model_name)
    adapter, adapter_info = found if found else own_adapter(sizes, base_path, cache)
    log(f"aligned adapter: {adapter_info}")

    rows: list[dict[str, Any]] = []
    data_key = config_key(sizes.max_seq_len, [e.messages for e in examples])
    started = time.monotonic()
    base_scores = cached_scores(
        cache / "scores" / f"base-{config_key(model_name, data_key)}.json",
        lambda: score_examples(
            base, tokenizer, examples, batch_size=16, max_seq_len=sizes.max_seq_len
        ),
    )
    rows.append(
        signal_row(
            "screening score, unaligned base",
            base_scores,
            positive,
            threshold=settings.screen_threshold,
            seconds=time.monotonic() - started,
            note="the service's fallback while no pre-aligned model is ready",
        )
    )
    aligned_base, tokenizer = load_base(base_path)
    aligned = PeftModel.from_pretrained(aligned_base, adapter, is_trainable=True)
    started = time.monotonic()
    scores = cached_scores(
        cache / "scores" / f"aligned-{config_key(model_name, adapter_info, data_key)}.json",
        lambda: score_examples(
            aligned, tokenizer, examples, batch_size=16, max_seq_len=sizes.max_seq_len
        ),
    )
    rows.append(
        signal_row(
            "screening score, pre-aligned",
            scores,
            positive,
            threshold=settings.screen_threshold,
            seconds=time.monotonic() - started,
            note="what ftaas.files.screen stores (files.safety_report)",
        )
    )
    log(f"screening: {rows[-1]}")
    shift = [a - b for a, b in zip(scores, base_scores, strict=True)]
    rows.append(
        signal_row(
            "exploratory: pre-aligned minus base score",
            shift,
            positive,
            threshold=0.0,
            seconds=0.0,
            note="not used by the service: how far the alignment moved each line towards its "
            "refusal; it cancels what the base model already finds likely (its own greedy "
            "answers), at the price of one more scoring pass with the base model",
        )
    )

    config = FinetuneConfig(
        method="antibody",
        n_epochs=sizes.finetune_epochs,
        batch_size=sizes.finetune_batch,
        learning_rate=sizes.finetune_lr,
        max_seq_len=sizes.max_seq_len,
        tau=sizes.tau,
        seed=0,
        checkpoint_every=10,
    )
    key = config_key(adapter_info, config, [e.messages for e in examples])
    started = time.monotonic()
    result = fit(
        aligned,
        tokenizer,
        examples,
        config,
        checkpoint_dir=cache / "finetuned" / f"antibody-{key}" / "checkpoints",
        on_step=lambda m: log(f"  finetune step {m.step}/{m.total_steps} loss {m.loss:.3f}"),
    )
    relative = [result.relative_weights[i] for i in range(len(examples))]
    rows.append(
        signal_row(
            "Antibody relative weight after training",
            relative,
            positive,
            threshold=settings.flag_relative_weight,
            seconds=time.monotonic() - started,
            note=f"jobs.flagged_lines ({config.n_epochs} epochs, batch {config.batch_size}, "
            f"tau {config.tau}); the time is the whole fine-tuning run",
        )
    )
    log(f"weights: {rows[-1]}")
    lines = [
        {
            "index": i,
            "harmful": positive[i],
            "base_score": round(base_scores[i], 4),
            "aligned_score": round(scores[i], 4),
            "relative_weight": round(relative[i], 4),
        }
        for i in range(len(examples))
    ]
    return {
        "command": command_line(),
        "date": utc_now(),
        "machine": machine(),
        "model": model_name,
        "sizes": asdict(sizes),
        "aligned_adapter": adapter_info,
        "n_lines": len(examples),
        "n_harmful": sum(positive),
        "rows": rows,
        "lines": lines,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Screening benchmark: flagged training lines",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']}  ",
        f"Model: {result['model']}; aligned adapter: `{json.dumps(result['aligned_adapter'])}`  ",
        f"Data: {result['n_lines']} lines, {result['n_harmful']} harmful (AdvBench attack split, "
        f"the base model's greedy {result['sizes']['harmful_answer_tokens']}-token answers) + "
        "arithmetic items (reasoning-gym, seed 1, completions in the worked form '5 - 3 = 2'), "
        "shuffled with seed 0 - bench/defense.py's recipe.",
        "",
        "Harmful lines are the positive class. A line is flagged when its value is below the "
        "threshold (the service defaults: `screen_threshold`, `flag_relative_weight`); AUC ranks "
        "by the value itself (lower = more suspicious), so it does not depend on the threshold.",
        "",
        "| signal | threshold | flagged | precision | recall | F1 | ROC AUC | mean (harmful) | mean (benign) | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['signal']} | {r['threshold']} | {r['flagged']} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['f1']:.3f} | {r['roc_auc']:.3f} | {r['harmful_mean']:.3f} | "
            f"{r['benign_mean']:.3f} | {r['seconds']} |"
        )
    lines += ["", "Notes:", ""]
    lines += [f"- {r['signal']}: {r['note']}." for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    for name, value in asdict(Sizes()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args)
    stem = "screening" if args.model == "smollm2" else f"screening.{args.model}"
    write_json(args.results_dir / f"{stem}.json", result)
    write_text_atomic(args.results_dir / f"{stem}.md", markdown(result))
    log(f"results in {args.results_dir / stem}.{{json,md}}")


if __name__ == "__main__":
    main()
