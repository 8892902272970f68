"""Attach a LoRA adapter and list the parameters the loops may train (LoRA tensors only)."""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from defense.config import LoraSettings

LLAMA_LIKE_TARGETS = ("q_proj", "k_proj", "v_proj")


def default_target_modules(model: nn.Module) -> tuple[str, ...]:
    """GPT-2: the fused ``c_attn``; any model with q/k/v projections: ``q_proj, k_proj, v_proj``
    (the released Antibody code's placement)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type == "gpt2":
        return ("c_attn",)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if all(target in names for target in LLAMA_LIKE_TARGETS):
        return LLAMA_LIKE_TARGETS
    raise ValueError(
        f"target_modules: no default for model type {model_type!r}; name the modules explicitly"
    )


def attach_lora(
    model: PreTrainedModel, settings: LoraSettings, *, seed: int | None = None
) -> PeftModel:
    """Wrap ``model`` with a fresh, trainable LoRA adapter; base weights stay frozen.

    ``seed`` (optional) fixes the random initialisation of the LoRA A matrices without touching
    the caller's global RNG stream.
    """
    targets = settings.target_modules or default_target_modules(model)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
        lora_dropout=settings.dropout,
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
        # GPT-2's Conv1D stores weights transposed; peft needs to know to avoid a warning.
        fan_in_fan_out=getattr(model.config, "model_type", None) == "gpt2",
    )
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[], enabled=seed is not None):
        # peft calls a transformers API that transformers 5 deprecates; nothing for us to fix.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        if seed is not None:
            torch.manual_seed(seed)
        return get_peft_model(model, config)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA tensors, in ``named_parameters`` order (the order of every flat vector,
    optimizer state and checkpoint). Any other trainable parameter is an error: the defense's
    guarantees (and the adapter files) cover LoRA tensors only."""
    params: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_" not in name:
            raise ValueError(
                f"model: parameter {name} is trainable but is not a LoRA tensor; only LoRA "
                "parameters may be trained (freeze it or load the adapter without modules_to_save)"
            )
        params.append(param)
    if not params:
        raise ValueError(
            "model: no trainable LoRA parameters (attach_lora, or load the adapter with is_trainable=True)"
        )
    return params
