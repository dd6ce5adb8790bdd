"""One tokenisation config for every layer, and the padded, length-sorted batches built from it.

:class:`Tokenization` is passed through capture, statistics, loss and generation alike, so they all see the
same tokens. :func:`batches` groups texts of similar length (longest first) and records which text each row
is; positions follow the attention mask, so left padding does not shift them.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn

from probes.choices import BATCH_SIZE, MAX_LENGTH, PADDING_SIDE
from probes.model.architectures import unwrap
from probes.errors import XlalignError


class TokenizationError(XlalignError):
    """A tokenisation setting that cannot work, or texts that cannot be tokenised with it."""


@dataclass(frozen=True)
class Tokenization:
    """How texts become model inputs.

    ``batch_size`` texts per forward pass; ``max_length`` tokens per text (longer texts are truncated, with a
    warning saying how many); ``padding_side`` ``"right"`` or ``"left"`` (results are the same either way;
    generation pads left regardless); ``add_special_tokens``: the tokenizer's own BOS/EOS; ``exclude_bos``:
    pooling and statistics skip the BOS token (it is still fed to the model); ``chat_template``: wrap each
    text as one user turn with the tokenizer's chat template and generation prompt.
    """

    batch_size: int = BATCH_SIZE
    max_length: int = MAX_LENGTH
    padding_side: str = PADDING_SIDE
    add_special_tokens: bool = True
    exclude_bos: bool = False
    chat_template: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise TokenizationError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not isinstance(self.max_length, int) or self.max_length < 1:
            raise TokenizationError(f"max_length must be a positive int, got {self.max_length!r}")
        if self.padding_side not in ("left", "right"):
            raise TokenizationError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")

    def as_dict(self) -> dict:
        return asdict(self)

    def encode(self, tokenizer, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (truncated to ``max_length``)."""
        if isinstance(texts, str):
            raise TokenizationError("expected a list of texts, got one string; wrap it in a list")
        texts = list(texts)
        if not texts:
            raise TokenizationError("no texts to tokenise: give at least one")
        bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
        if bad:
            raise TokenizationError(f"texts must be strings; items {bad[:5]} are not")
        if self.chat_template:
            if getattr(tokenizer, "chat_template", None) is None:
                raise TokenizationError(f"chat_template=True, but {type(tokenizer).__name__} has no chat template")
            ids = [
                list(
                    tokenizer.apply_chat_template(
                        [{"role": "user", "content": text}],
                        tokenize=True,
                        add_generation_prompt=True,
                        return_dict=False,
                    )
                )
                for text in texts
            ]
        else:
            ids = tokenizer(texts, add_special_tokens=self.add_special_tokens)["input_ids"]
        too_long = sum(len(row) > self.max_length for row in ids)
        if too_long:
            warnings.warn(
                f"{too_long} of {len(ids)} texts are longer than max_length={self.max_length} tokens and were "
                "truncated; raise Tokenization.max_length to keep them whole",
                stacklevel=3,
            )
        empty = [i for i, row in enumerate(ids) if not row]
        if empty:
            raise TokenizationError(f"texts {empty[:5]} tokenise to no tokens at all; remove them")
        return [list(row[: self.max_length]) for row in ids]


@dataclass(frozen=True)
class Batch:
    """Padded token ids of some texts (``rows``: their indices), with their masks."""

    rows: Int[Tensor, " batch"]
    input_ids: Int[Tensor, "batch tokens"]
    attention_mask: Int[Tensor, "batch tokens"]
    token_mask: Bool[Tensor, "batch tokens"]  # tokens that pooling and statistics see

    def __len__(self) -> int:
        return len(self.rows)

    def part(self, rows: slice) -> Batch:
        """Some of this batch's rows, without the padding columns none of them uses."""
        used = self.attention_mask[rows].bool().any(dim=0).nonzero().flatten()
        columns = slice(int(used.min()), int(used.max()) + 1)
        return Batch(
            self.rows[rows],
            self.input_ids[rows, columns],
            self.attention_mask[rows, columns],
            self.token_mask[rows, columns],
        )

    def model_inputs(self, model: nn.Module) -> dict[str, Tensor]:
        """Inputs for ``model``; positions follow the mask, so left padding does not shift them."""
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if _takes_position_ids(type(unwrap(model)).forward):
            inputs["position_ids"] = (self.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        return inputs


@functools.lru_cache(maxsize=None)
def _takes_position_ids(forward: Callable) -> bool:
    """Whether a model class's forward accepts ``position_ids`` (BLOOM's does not: ALiBi follows the mask)."""
    return "position_ids" in inspect.signature(forward).parameters


def batches(
    tokenizer,
    texts: Sequence[str],
    tokenization: Tokenization = Tokenization(),
    *,
    padding_side: str | None = None,
    device: torch.device | str = "cpu",
) -> list[Batch]:
    """Tokenise ``texts`` and group them into batches of similar length (longest first).

    ``padding_side`` overrides the config's (generation pads left).
    """
    ids = tokenization.encode(tokenizer, texts)
    side = padding_side or tokenization.padding_side
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bos_id = tokenizer.bos_token_id if tokenization.exclude_bos else None
    out = []
    for start in range(0, len(order), tokenization.batch_size):
        rows = order[start : start + tokenization.batch_size]
        width = len(ids[rows[0]])
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            n = len(ids[row])
            span = slice(width - n, width) if side == "left" else slice(0, n)
            input_ids[r, span] = torch.tensor(ids[row])
            attention_mask[r, span] = 1
        token_mask = attention_mask.bool()
        if bos_id is not None:
            token_mask &= input_ids != bos_id
        out.append(Batch(torch.tensor(rows), input_ids.to(device), attention_mask.to(device), token_mask.to(device)))
    return out
