"""Few-shot translation into the pivot, scored with chrF (sacrebleu), with a plan steering the source sentence.

A prompt shows ``shots`` held-out pairs, ``"<Language>: <sentence>\\n<Pivot>: <translation>\\n\\n"``, then
``"<Language>: <source>\\n<Pivot>:"``; the model continues greedily until a line break. A plan item that edits
every prompt token edits only the tokens of the source sentence here (its schedules' prefill becomes that token
mask, decoding is left alone): what a better aligned source representation does for the translation, not what
steering the English output does. An item defined at the last prompt token (INCLINE) keeps its own protocol: the
last token of the whole translation prompt (``"<Pivot>:"``, the position that predicts the translation), with
targets from a clean pass of that prompt, as INCLINE's released code applies it to a task prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import langcodes
import torch
from jaxtyping import Bool
from torch import Tensor, nn

from probes.capture.bundle import takes_bundle
from probes.analysis import bootstrap_ci
from probes.capture import Batch, Tokenization, batches
from probes.capture.context import batch_context, new_call
from probes.capture.passes import generate
from probes.data import ParallelCorpus
from probes.model import ModelError, has_lm_head
from steer.apply import Languages, PlanItem, plan_items, steer
from steer.errors import EvaluationError

SHOTS = 3
NEW_TOKENS_PER_SOURCE_TOKEN = 1.5  # generation budget: 1.5x the source sentence's tokens, plus a few
# (NTREX English references are at most 1.13x their source's tokens in Gemma's tokenizer)
EXTRA_NEW_TOKENS = 8


def language_name(code: str) -> str:
    """The English name of a language code (``deu`` -> German, ``zho-CN`` -> Chinese)."""
    return langcodes.Language.get(langcodes.standardize_tag(code, macro=True)).language_name()


@dataclass(frozen=True)
class TranslationTask:
    """Prompts that ask for the pivot translation of ``sources``, with the character span of each source."""

    language: str
    prompts: list[str]
    spans: list[tuple[int, int]]
    references: list[str]

    def __len__(self) -> int:
        return len(self.prompts)


def translation_task(
    corpus: ParallelCorpus, language: str, pivot: str, n: int, *, shots: int = SHOTS
) -> TranslationTask:
    """Translate sentences ``shots .. shots + n`` of ``corpus`` from ``language`` into ``pivot``, shown its first
    ``shots`` pairs."""
    sources, targets = corpus.texts(language), corpus.texts(pivot)
    if len(sources) < shots + n:
        raise EvaluationError(
            f"translation of {n} {language} sentences with {shots} shots needs {shots + n} sentences; the corpus has "
            f"{len(sources)}"
        )
    src, tgt = language_name(language), language_name(pivot)
    shown = "".join(f"{src}: {s}\n{tgt}: {t}\n\n" for s, t in zip(sources[:shots], targets[:shots]))
    prompts, spans = [], []
    for source in sources[shots : shots + n]:
        start = len(shown) + len(src) + 2
        prompts.append(f"{shown}{src}: {source}\n{tgt}:")
        spans.append((start, start + len(source)))
    return TranslationTask(language, prompts, spans, list(targets[shots : shots + n]))


def source_tokens(tokenizer, task: TranslationTask, tokenization: Tokenization) -> list[Bool[Tensor, " tokens"]]:
    """For each prompt, which of its tokens (as ``tokenization`` encodes it) overlap the source sentence."""
    if tokenization.chat_template:
        raise EvaluationError("few-shot translation prompts are plain text: use a Tokenization without chat_template")
    ids = tokenization.encode(tokenizer, task.prompts)
    masks = []
    for index, (prompt, (start, end), expected) in enumerate(zip(task.prompts, task.spans, ids)):
        encoded = tokenizer(prompt, add_special_tokens=tokenization.add_special_tokens, return_offsets_mapping=True)
        if list(encoded["input_ids"][: len(expected)]) != expected:
            raise EvaluationError(f"{task.language} prompt {index}: the tokenizer's offsets do not match its encoding")
        offsets = encoded["offset_mapping"][: len(expected)]
        masks.append(torch.tensor([a < end and b > start and b > a for a, b in offsets], dtype=torch.bool))
    return masks


def new_tokens(source: Tensor) -> int:
    """The generation budget of a translation whose source has ``source.sum()`` tokens (each translation gets its
    own, so batched equals one at a time)."""
    return int(NEW_TOKENS_PER_SOURCE_TOKEN * int(source.sum())) + EXTRA_NEW_TOKENS


def _batch_mask(batch: Batch, masks: list[Tensor]) -> Bool[Tensor, "batch tokens"]:
    """The per-prompt masks placed like ``batch``'s left-padded tokens."""
    out = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    for r, row in enumerate(batch.rows.tolist()):
        out[r, out.shape[1] - len(masks[row]) :] = masks[row]
    return out


class SourceSteeringError(EvaluationError):
    """A plan item that edits chosen prompt tokens other than the last one: neither the source sentence's tokens
    nor INCLINE's last prompt token, so the translation harness cannot measure it (it would measure another edit)."""


def on_source(plan: Sequence[PlanItem], mask: Tensor) -> list[PlanItem]:
    """``plan`` as the translation harness applies it: an item on every prompt token restricted to the tokens of
    ``mask`` with no decode step; an item on the last prompt token (INCLINE) unchanged; any other prefill refused
    (:class:`SourceSteeringError`)."""
    out = []
    for edit, schedule in plan_items(plan):
        if isinstance(schedule.prefill, str) and schedule.prefill == "all":
            out.append((edit, replace(schedule, prefill=mask, decode="none")))
        elif isinstance(schedule.prefill, str) and schedule.prefill == "last":
            out.append((edit, schedule))
        else:
            raise SourceSteeringError(
                f"{type(edit).__name__} edits prefill={schedule.prefill!r}: neither every prompt token (restricted "
                "to the source sentence) nor the last one (INCLINE's protocol), so its translation is not measured"
            )
    return out


@takes_bundle
def translate(
    model: nn.Module,
    tokenizer,
    task: TranslationTask,
    plan: Callable[[Sequence[str]], Sequence[PlanItem]] | None = None,
    *,
    languages: Languages = None,
    tokenization: Tokenization = Tokenization(),
) -> list[str]:
    """Greedy translations of ``task`` (first line of each continuation, stripped); ``plan(prompts)`` (example
    ``e`` of a batch is ``prompts[e]``) steers the source tokens, gated by ``languages``."""
    if not has_lm_head(model):
        raise ModelError(f"translation needs a model with an LM head (a causal LM); {type(model).__name__} has none")
    device = next(model.parameters()).device
    masks = source_tokens(tokenizer, task, tokenization)
    items = [] if plan is None else plan(task.prompts)
    out = [""] * len(task)
    call = new_call()
    for batch in batches(tokenizer, task.prompts, tokenization, padding_side="left", device=device):
        budgets = [new_tokens(masks[row]) for row in batch.rows.tolist()]
        with steer(model, on_source(items, _batch_mask(batch, masks)), languages=languages):
            with torch.inference_mode(), batch_context(batch, call):
                generated = generate(
                    model,
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    do_sample=False,
                    max_new_tokens=max(budgets),
                    stop_strings=["\n"],
                    tokenizer=tokenizer,
                    pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                )
        new = generated[:, batch.input_ids.shape[1] :]
        texts = tokenizer.batch_decode([ids[:budget] for ids, budget in zip(new, budgets)], skip_special_tokens=True)
        for row, text in zip(batch.rows.tolist(), texts):
            out[row] = text.strip().split("\n")[0].strip()
    return out


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu's defaults: character 6-grams, beta 2), 0-100."""
    _check_pairs(hypotheses, references)
    return _chrf().corpus_score(list(hypotheses), [list(references)]).score


def chrf_change(
    references: Sequence[str], before: Sequence[str], after: Sequence[str], *, n_boot: int = 1000
) -> tuple[float, float, float, float, float]:
    """Corpus chrF of ``before`` and ``after``, their difference and its 95% paired-bootstrap interval over
    sentences (each resample's chrF from its sentences' summed n-gram statistics, as sacrebleu's own paired
    bootstrap computes it)."""
    _check_pairs(before, references)
    _check_pairs(after, references)
    metric = _chrf()
    stats = [
        torch.tensor(metric._extract_corpus_statistics(list(h), [list(references)]), dtype=torch.float64)
        for h in (before, after)
    ]

    def score(summed: Tensor) -> float:
        return metric._compute_score_from_stats(summed.tolist()).score

    def change(old: Tensor, new: Tensor, weights: Tensor | None = None) -> float | Tensor:
        if weights is None:
            return score(new.sum(0)) - score(old.sum(0))
        return torch.tensor([score(b) - score(a) for a, b in zip(weights @ old, weights @ new)], dtype=torch.float64)

    low, high = bootstrap_ci(change, *stats, n_boot=n_boot)
    off, on = score(stats[0].sum(0)), score(stats[1].sum(0))
    return off, on, on - off, low, high


def _chrf():
    from sacrebleu.metrics import CHRF  # imported when scoring, not with steer.evaluate

    return CHRF()


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references) or not references:
        raise EvaluationError(f"chrF of {len(hypotheses)} hypotheses against {len(references)} references")
