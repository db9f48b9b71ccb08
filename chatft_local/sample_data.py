"""The bundled sample dataset: ultrachat-shaped chat records written for this project.

`python -m chatft_local.sample_data > chatft_local/data/sample_chat.jsonl` regenerates the bundled file. The
conversations are short and regular (a stand-in model learns them in seconds); the shape is the notebook's:
`{"prompt": str, "messages": [{"role", "content"}, ...], "prompt_id": sha256 hex}`.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

SAMPLE_FILE = Path(__file__).resolve().parent / "data" / "sample_chat.jsonl"

TOPICS = {
    "Azure Functions": ("runs small pieces of code in response to events", "a function app with triggers and bindings"),
    "Azure Machine Learning": ("trains, registers and deploys models", "a workspace with compute and endpoints"),
    "LoRA": ("fine-tunes a model by learning small low-rank matrices", "adapters merged into the base weights"),
    "a managed online endpoint": ("serves a model over HTTPS", "deployments behind one scoring address"),
    "Event Grid": ("delivers events from Azure services to handlers", "topics, subscriptions and retries"),
    "Service Bus": ("queues messages between services reliably", "queues with peek-lock and dead-lettering"),
    "Blob Storage": ("stores files of any size in containers", "containers of block blobs"),
    "Table Storage": ("keeps small structured entities by key", "partitions of entities with ETags"),
    "MLflow": ("tracks experiments and packages models", "runs, metrics and a model registry"),
    "a learning rate": ("sets how big each training step is", "a number such as 0.00002 with a schedule"),
    "tokenization": ("splits text into pieces a model reads", "a vocabulary of subword tokens"),
    "perplexity": ("measures how surprised a model is by text", "the exponential of the average loss"),
    "an idle endpoint": ("is a deployed model nobody calls", "a running instance that still bills"),
    "JSON Lines": ("stores one JSON object per line", "a file that can be read as a stream"),
    "a validation report": ("lists every bad line of an upload and why", "errors and warnings with line numbers"),
}
QUESTIONS = [
    ("What is {t}?", "{T} {what}."),
    ("Explain {t} in one sentence.", "In one sentence: {t} {what}."),
    ("How would you describe {t} to a new engineer?", "{T} {what}; think of it as {shape}."),
    ("What does {t} look like in practice?", "In practice {t} is {shape}."),
    ("Why should I care about {t}?", "Because {t} {what}, and that saves time and money."),
]
FOLLOW_UPS = [
    ("Give me a short example.", "Example: {shape}."),
    ("Can you say that more simply?", "Simply put, {t} {what}."),
    ("Thanks, that helps.", "Glad it helps. Ask me about {t} any time."),
]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def sample_records(count: int = 300, seed: int = 7) -> list[dict]:
    """`count` deterministic records; about a third have a system message, about half a follow-up turn."""
    rng = random.Random(seed)
    topics = list(TOPICS.items())
    records = []
    for i in range(count):
        topic, (what, shape) = topics[i % len(topics)]
        q, a = QUESTIONS[(i // len(topics)) % len(QUESTIONS)]
        fill = {"t": topic, "T": _cap(topic), "what": what, "shape": shape}
        messages = []
        if rng.random() < 0.33:
            messages.append({"role": "system", "content": "You are a concise assistant for Azure ML engineers."})
        messages += [{"role": "user", "content": q.format(**fill)}, {"role": "assistant", "content": a.format(**fill)}]
        if rng.random() < 0.5:
            fq, fa = FOLLOW_UPS[rng.randrange(len(FOLLOW_UPS))]
            messages += [{"role": "user", "content": fq}, {"role": "assistant", "content": fa.format(**fill)}]
        prompt = messages[1]["content"] if messages[0]["role"] == "system" else messages[0]["content"]
        prompt_id = hashlib.sha256(f"{i}:{prompt}".encode()).hexdigest()
        records.append({"prompt": prompt, "messages": messages, "prompt_id": prompt_id})
    return records


if __name__ == "__main__":
    for record in sample_records():
        print(json.dumps(record, ensure_ascii=False))
