"""Research scaffolding, not part of the package: a tiny Mixtral-style MoE trained on the bundled demo corpus,
what ``scripts/train_tiny_moe.py`` measures and notebook 05 studies (no pretrained MoE is installable offline,
and random routers only show chance).

``train_tiny_moe(steps=1000)`` builds the seeded model and trains it on the training split of
:func:`demo_splits`; ``TinyMoE.save(dir)`` / ``TinyMoE.load(dir)`` keep a trained one (weights, tokenizer and
the training settings with the loss curve).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from probes.capture import Tokenization, batches
from probes.data import ParallelCorpus, demo_corpus
from probes.model import load_model, random_model

SIZES = dict(
    hidden_size=128,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    num_local_experts=8,
    num_experts_per_tok=2,
    router_aux_loss_coef=0.02,
    max_position_embeddings=128,
)
TRAINING_FILE = "tiny_moe.json"


def demo_splits(seed: int = 0) -> tuple[ParallelCorpus, ParallelCorpus]:
    """The demo corpus split 80/20 into training and held-out sentences (parallel across languages)."""
    return demo_corpus().split(test_fraction=0.2, seed=seed)


def untrained_tiny_moe(seed: int = 0):
    """The model before training: seeded random weights of :data:`SIZES`, and the demo tokenizer."""
    return random_model("mixtral", seed=seed, **SIZES)


def train(
    model, tokenizer, corpus: ParallelCorpus, *, steps: int, batch_size: int, lr: float, seed: int
) -> list[float]:
    """Next-token training (with the load-balancing loss) of ``model`` in place on sentences of every language,
    shuffled together; returns the loss curve. The model is left in eval mode."""
    texts = [text for lang in corpus.languages for text in corpus.texts(lang)]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    model.train()
    losses, start = [], time.time()
    with torch.enable_grad():  # whatever grad mode the caller is in
        for step in range(steps):
            picked = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
            (batch,) = batches(
                tokenizer, [texts[i] for i in picked], Tokenization(batch_size=batch_size, max_length=96)
            )
            labels = batch.input_ids.masked_fill(~batch.attention_mask.bool(), -100)
            out = model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels, output_router_logits=True
            )
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(out.loss.item())
            if step % 100 == 0 or step == steps - 1:
                print(f"step {step:5d}  loss {out.loss.item():.3f}  {time.time() - start:.0f}s", file=sys.stderr)
    model.eval()
    return losses


@dataclass
class TinyMoE:
    """A trained tiny MoE, its tokenizer, and how it was trained."""

    model: torch.nn.Module = field(repr=False)
    tokenizer: object = field(repr=False)
    steps: int
    batch_size: int
    lr: float
    seed: int
    curve: list[float] = field(repr=False)

    def save(self, directory: str | Path) -> Path:
        """Weights and tokenizer (``save_pretrained``) and the training record (:data:`TRAINING_FILE`)."""
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        record = {name: value for name, value in asdict(self).items() if name not in ("model", "tokenizer")}
        (directory / TRAINING_FILE).write_text(json.dumps(record))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> TinyMoE:
        directory = Path(directory)
        record_path = directory / TRAINING_FILE
        if not record_path.is_file():
            raise FileNotFoundError(
                f"{directory} holds no {TRAINING_FILE}: save a tiny MoE there with "
                "`scripts/train_tiny_moe.py --save DIR`"
            )
        model, tokenizer = load_model(directory)
        return cls(model, tokenizer, **json.loads(record_path.read_text()))


@contextlib.contextmanager
def _threads(n: int | None):
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_tiny_moe(
    *, steps: int = 1000, batch_size: int = 32, lr: float = 3e-3, seed: int = 0, threads: int | None = None
) -> TinyMoE:
    """The seeded tiny MoE trained for ``steps`` on the training split of :func:`demo_splits` (``threads``: CPU
    threads while training, default torch's current setting)."""
    model, tokenizer = untrained_tiny_moe(seed)
    with _threads(threads):
        curve = train(model, tokenizer, demo_splits(seed)[0], steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    return TinyMoE(model, tokenizer, steps, batch_size, lr, seed, curve)
