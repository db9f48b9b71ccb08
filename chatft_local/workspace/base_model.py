"""The base model local fine-tuning starts from.

By default it is `phi3-tiny`: a Phi-3-architecture causal LM (2 layers, hidden 128) with random weights, a small
byte-level BPE tokenizer and Phi-3's chat format, all built offline on first use and kept in
`<state>/workspace/base-models/phi3-tiny/<version>/` as an ordinary Hugging Face directory. It is a stand-in that
shows the mechanics (fine-tune, register, deploy, score) in seconds on a CPU; its answers are noise shaped by the
training data. Quality needs real weights: set LOCAL_BASE_MODEL to a local causal-LM directory (for example a
downloaded Phi-3-mini-4k-instruct). Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

TINY_NAME = "phi3-tiny"
# Bump when the recipe below changes, so an old cached build is not reused.
TINY_VERSION = "2"
TINY_SEED = 1234

# The Phi-3 chat format. The `{% generation %}` markers let the trainer mask everything but assistant tokens
# (`return_assistant_tokens_mask`); the assistant's `<|end|>` lies inside them so the model learns to stop.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|assistant|>\n' }}{%- generation %}{{- message['content'] + '<|end|>' }}{%- endgeneration %}{{- '\n' }}"
    "{%- else %}"
    "{{- '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

# Settings that make the stand-in learn visibly in a few CPU seconds. Azure registry models carry the same tag
# (a dict literal); the app merges it over the notebook's defaults, and an upload's overrides win over both.
TINY_TAGS = {
    "model_specific_defaults": repr({
        "learning_rate": 1e-2,
        "num_train_epochs": 3,
        "lr_scheduler_type": "linear",
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "max_seq_length": 384,
        "lora_r": 16,
        "lora_alpha": 32,
        "apply_deepspeed": "false",
    }),
    "architecture": "Phi3ForCausalLM",
    "description": "Random-weight Phi-3-architecture stand-in built offline; shows the mechanics, not quality.",
}

# Text the tokenizer's merges are learned from: chat-assistant English, as ultrachat holds.
_TOKENIZER_TEXT = """\
The assistant answers questions clearly and helpfully. Here is an example of how to explain a process step by step.
1. First, read the question carefully and find out what the user wants to know.
2. Second, gather the information that is important for the answer, including examples and data.
3. Finally, write the answer in plain language, and check that it is correct and complete.
Can you summarize the main points of this article about climate change and renewable energy?
Sure! The article discusses how solar and wind power have become cheaper than coal in many parts of the world.
It also explains that governments, companies and people can reduce emissions by using energy more efficiently.
What are some tips for learning a new language? Practice every day, listen to native speakers, read simple books,
and do not be afraid of making mistakes. Language learning takes time, but it is a rewarding experience.
Write a short story about a robot who wants to become a painter. Once upon a time, in a small town by the sea,
there was a robot named Pixel. Every morning Pixel watched the sunrise and wished it could paint the colors it saw.
How does a computer program work? A program is a set of instructions that tells the computer what to do. The
computer executes each instruction in order, reading data from memory, performing calculations and writing results.
Please provide a recipe for a healthy breakfast. You will need oats, milk, a banana, some honey and a handful of nuts.
Cook the oats in the milk for five minutes, then add the sliced banana, the honey and the nuts on top. Enjoy!
Why is the sky blue? Sunlight is made of many colors. When it passes through the atmosphere, blue light is scattered
more than other colors because it travels as shorter waves, so we see a blue sky during the day.
Thank you for your question. I hope this information helps. Let me know if you have any other questions!
In conclusion, the history of the city shows how trade, culture and education shaped its growth over centuries.
The company's new product will be available next month. Customers can order it online or visit one of the stores.
Explain the difference between weather and climate. Weather describes short-term conditions such as rain or sun,
while climate describes the average conditions of a region over many years, such as temperature and rainfall.
"""


class BaseModelError(ValueError):
    """The configured base model cannot be used; the message names the setting and the path."""


@dataclass(frozen=True)
class BaseModelInfo:
    path: str  # a Hugging Face model directory
    name: str
    version: str
    tags: dict[str, str] = field(default_factory=dict)


_build_lock = threading.Lock()


def ensure_base_model(state_dir: str | os.PathLike, local_base_model: str = "") -> BaseModelInfo:
    """The base model to fine-tune: LOCAL_BASE_MODEL's directory when set (checked, never downloaded), else the
    tiny stand-in, built once under the state directory."""
    if local_base_model:
        return _local_model(Path(local_base_model).expanduser())
    target = Path(state_dir) / "workspace" / "base-models" / TINY_NAME / TINY_VERSION
    # One build at a time in this process: transformers' lazy imports are not safe to race from two threads (a
    # concurrent first import raised "cannot import name 'PreTrainedTokenizerFast'"); other processes are covered
    # by the build's atomic rename.
    with _build_lock:
        if not (target / "config.json").is_file():
            _build_tiny(target)
    return BaseModelInfo(str(target.resolve()), TINY_NAME, TINY_VERSION, dict(TINY_TAGS))


def _local_model(path: Path) -> BaseModelInfo:
    if not path.is_dir():
        raise BaseModelError(f"LOCAL_BASE_MODEL {path} is not a directory; set it to a local Hugging Face causal-LM "
                             f"directory, or leave it empty for the built-in stand-in model")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise BaseModelError(f"LOCAL_BASE_MODEL {path} has no readable config.json ({type(error).__name__}); it must "
                             f"be a Hugging Face model directory") from None
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForCausalLM") for a in architectures):
        raise BaseModelError(f"LOCAL_BASE_MODEL {path} is not a causal language model (architectures: "
                             f"{', '.join(map(str, architectures)) or 'none'})")
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    has_tokenizer = (path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()
    if not has_weights or not has_tokenizer:
        missing = " and ".join(w for w, ok in (("weights", has_weights), ("a tokenizer", has_tokenizer)) if not ok)
        raise BaseModelError(f"LOCAL_BASE_MODEL {path} has no {missing}")
    tags = {"architecture": str(architectures[0])}
    return BaseModelInfo(str(path.resolve()), path.name, "local", tags)


def _build_tiny(target: Path) -> None:
    """Build into a temporary sibling, then rename into place: concurrent builders race harmlessly."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".build-{uuid.uuid4().hex}"
    try:
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(scratch)
        build_model(tokenizer).save_pretrained(scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / "config.json").is_file():  # lost to something other than a finished build
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def build_tokenizer():
    """A byte-level BPE tokenizer learned from the built-in sample, with Phi-3's chat tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, min_frequency=1, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_TOKENIZER_TEXT.splitlines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|end|>", pad_token="<|endoftext|>",
                                        unk_token="<|endoftext|>", model_max_length=4096,
                                        clean_up_tokenization_spaces=False,
                                        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer):
    """A Phi-3-architecture causal LM sized for CPU seconds, with deterministic random weights."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>")]
    config = Phi3Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=end_ids[0],
                        bos_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
                        # Wider than the usual 0.02, so that a LoRA adapter can sharpen the output distribution
                        # (the final norm caps the hidden state, so small output weights cap the logits).
                        initializer_range=0.1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = Phi3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=end_ids, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=tokenizer.pad_token_id)
    return model


def base_model_hints(state_dir: str | os.PathLike, local_base_model: str = "") -> tuple[str, dict]:
    """(tokenizer directory or "", default training parameters) of the base model local fine-tuning uses, for
    token counts at validation. Nothing is built or loaded: the stand-in's tokenizer is used once it has been
    built (by the first local fine-tuning or `chatft demo`); before that the caller falls back to the estimate.

    LOCAL_BASE_MODEL carries no `model_specific_defaults`, so its default `max_seq_length` is what the trainer
    takes when none is set: the smaller of `max_position_embeddings` (config.json) and the tokenizer's
    `model_max_length` (tokenizer_config.json)."""
    import ast

    if local_base_model:
        path = Path(local_base_model).expanduser()
        limits = []
        for name, key in (("config.json", "max_position_embeddings"), ("tokenizer_config.json", "model_max_length")):
            try:
                value = json.loads((path / name).read_text()).get(key)
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(value, int) and 0 < value < 10**7:  # transformers writes 1e30 for "no limit"
                limits.append(value)
        defaults = {"max_seq_length": min(limits)} if limits else {}
        return (str(path) if (path / "tokenizer.json").is_file() else ""), defaults
    target = Path(state_dir) / "workspace" / "base-models" / TINY_NAME / TINY_VERSION
    defaults = ast.literal_eval(TINY_TAGS["model_specific_defaults"])
    return (str(target) if (target / "tokenizer.json").is_file() else ""), defaults
