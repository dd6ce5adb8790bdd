"""Closed-loop evaluation: alignment and side effects with an intervention on vs off, on held-out sentences.

For each language and setting, every alignment metric is computed per layer between the (unsteered) pivot
sentences and the language's sentences with the intervention off and on; the confidence interval of the
change comes from a paired bootstrap over sentences. Side effects: next-token loss on the language's and on
the pivot's held-out text (the pivot runs with the same plan: a plan gated to the language leaves it
untouched), and the output-language fidelity of greedy continuations: the line- and word-level pass rates of the
language-confusion literature (:class:`probes.analysis.OutputLanguage`). Optionally a downstream measure: few-shot
translation of held-out sentences into the pivot with the plan steering the source sentence, scored with chrF
(:mod:`steer.translation`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor, nn
from torch.nn.functional import cross_entropy

from probes.capture.bundle import takes_bundle
from probes.analysis import PAIR_METRICS, OutputLanguage, bootstrap_ci
from probes.artifacts import LanguageDetector
from probes.capture import Tokenization, batches, capture, pooling_during
from probes.capture.context import batch_context, new_call
from probes.capture.decoder import run_batches
from probes.capture.passes import forward, generate
from probes.capture.progress import Progress, add_steps, progress_bar
from probes.data import ParallelCorpus
from probes.model import ModelError, Site, has_lm_head, n_layers, unwrap
from steer.apply import PlanItem, steer
from steer.translation import SHOTS, SourceSteeringError, chrf_change, translate, translation_task
from probes.errors import notice
from steer.errors import EvaluationError

COLUMNS = ["method", "setting", "language", "layer", "metric", "off", "on", "delta", "ci_low", "ci_high"]
EVAL_METRICS = ("mexa", "retrieval_top1")


@dataclass(frozen=True)
class Setting:
    """One configuration of one method: ``plan(language, texts)`` builds the (language-gated) plan that steers
    ``texts`` (example ``e`` of a steered batch is ``texts[e]`` or a prefix's; only plans computed from a clean
    pass of the texts, as INCLINE's, depend on them)."""

    method: str
    setting: str
    layer: int  # the first layer the plan edits; summaries average the layers from here on
    plan: Callable[[str, Sequence[str]], Sequence[PlanItem]]
    detected: bool = False  # gate on the language evaluate's detector finds, not on the true one


def gated_by_detection(settings: Sequence[Setting], detector_layer: int) -> list[Setting]:
    """Copies of the ``settings`` whose first edited layer comes after ``detector_layer``, gated on the language
    the detector finds in each example (``setting`` gains ``,gate=detected``)."""
    return [
        replace(s, setting=f"{s.setting},gate=detected", detected=True) for s in settings if s.layer > detector_layer
    ]


def _need_lm_head(model: nn.Module, what: str) -> None:
    if not has_lm_head(model):
        raise ModelError(f"{what} needs a model with an LM head (a causal LM); {type(model).__name__} has none")


# Logits per model call when measuring loss: with a large vocabulary (Gemma's 262k) a batch runs a few rows at a
# time, each part without the padding its rows do not need, which bounds memory (256 MB of float32 logits) and
# spends the LM head on real tokens only; results equal one text at a time.
LOGITS_PER_CALL = 2**26


@takes_bundle
def next_token_loss(
    model: nn.Module, tokenizer, texts: Sequence[str], *, tokenization: Tokenization = Tokenization()
) -> float:
    """Mean next-token cross-entropy over every non-pad prediction of ``texts`` (token-weighted).

    Run it inside ``steer(...)`` to measure a steered model. Padding never enters: batched == one-by-one.
    """
    _need_lm_head(model, "next-token loss")
    device = next(model.parameters()).device
    vocab = int(unwrap(model).get_output_embeddings().weight.shape[0])
    total, count = 0.0, 0
    call = new_call()
    with torch.inference_mode():
        for batch in batches(tokenizer, texts, tokenization, device=device):
            rows = max(1, LOGITS_PER_CALL // (batch.input_ids.shape[1] * vocab))
            for start in range(0, len(batch), rows):
                part = batch.part(slice(start, start + rows))
                with batch_context(part, call):
                    logits = forward(model, **part.model_inputs(model)).logits[:, :-1].float()
                targets = part.input_ids[:, 1:]
                scored = part.attention_mask[:, 1:].bool() & part.attention_mask[:, :-1].bool()
                total += cross_entropy(logits[scored], targets[scored], reduction="sum").item()
                count += int(scored.sum())
    if not count:
        raise EvaluationError("next-token loss: the texts have no token with a successor (each is one token long)")
    return total / count


def pooled_and_loss(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    sites: Sequence[Site],
    *,
    pooling: str = "mean",
    n_loss: int | None = None,
    tokenization: Tokenization = Tokenization(),
) -> tuple[dict[Site, Float[Tensor, "n *shape"]], float]:
    """``capture`` of ``texts`` and the :func:`next_token_loss` of the first ``n_loss`` (all when None) in one
    pass over those: their sites are pooled during the loss's own forward passes. Example ``e`` of every pass
    is ``texts[e]``, so plans built for ``texts`` (INCLINE's patch) line up."""
    scored = list(texts[:n_loss])
    with pooling_during(model, sites, pooling) as pooled:
        loss = next_token_loss(model, tokenizer, scored, tokenization=tokenization)
        if len(texts) > len(scored):
            rest = batches(tokenizer, texts[len(scored) :], tokenization, device=next(model.parameters()).device)
            run_batches(
                model,
                [replace(batch, rows=batch.rows + len(scored)) for batch in rest],
                stop_after=max(site.layer for site in sites),
            )
    return pooled, loss


@takes_bundle
def continuations(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 12,
    tokenization: Tokenization = Tokenization(),
) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), decoded without the prompt."""
    _need_lm_head(model, "generation")
    device = next(model.parameters()).device
    out = [""] * len(prompts)
    call = new_call()
    for batch in batches(tokenizer, prompts, tokenization, padding_side="left", device=device):
        with torch.inference_mode(), batch_context(batch, call):
            generated = generate(
                model,
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            )
        texts = tokenizer.batch_decode(generated[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
        for row, text in zip(batch.rows.tolist(), texts):
            out[row] = text
    return out


@dataclass
class _Measured:
    """One language's held-out numbers, with a plan on or off."""

    pooled: dict[Site, Tensor]
    loss: float
    fidelity: dict[str, float]  # line_fidelity, word_fidelity (ar, hi, ja, ko, ru, zh only)


def evaluate(
    model: nn.Module,
    tokenizer,
    test: ParallelCorpus,
    settings: Sequence[Setting],
    *,
    languages: Sequence[str],
    pivot: str = "eng",
    fidelity: OutputLanguage | None = None,
    detector: LanguageDetector | None = None,
    metrics: Sequence[str] = EVAL_METRICS,
    component: str = "hidden",
    pooling: str = "weighted",
    n_boot: int = 1000,
    n_prompts: int = 16,
    n_loss: int | None = 64,
    n_translations: int = 0,
    shots: int = SHOTS,
    tokenization: Tokenization = Tokenization(),
    done: pd.DataFrame | None = None,
    on_unit: Callable[[pd.DataFrame], None] | None = None,
    progress: Progress = False,
) -> pd.DataFrame:
    """Every setting for every language, on the held-out ``test`` corpus, as a tidy table (:data:`COLUMNS`).

    Alignment is measured on ``component`` pooled with ``pooling`` (default: MEXA's ``hidden``, ``weighted``).

    Per layer and metric: off, on, delta and a 95% paired-bootstrap interval of the delta. Per setting also
    ``<metric>_mean_after`` (mean over the layers from the setting's first edited layer on, at ``layer`` =
    that layer), ``loss_target``, ``loss_pivot`` (on the first ``n_loss`` texts: the LM head of a large
    vocabulary dominates the cost; the pivot pass is skipped when every plan item is gated to other languages,
    which leaves pivot inputs exactly as they are, so ``on`` is ``off``; a plan that can edit the pivot, as
    LEACE's, which erases every language, has its alignment ``on`` measured against the pivot with the plan on too,
    so the pair compared is the pair the plan produces) and, when ``fidelity`` is given and knows
    the language, ``line_fidelity`` and (ar, hi, ja, ko, ru, zh only) ``word_fidelity`` of greedy 12-token
    continuations of the first ``n_prompts`` texts (:meth:`OutputLanguage.pass_rates`, the language-confusion
    benchmark's LPR and WPR: 1.0 when no continuation had a line long enough to judge). Settings with ``detected`` are gated by
    ``detector`` (:func:`gated_by_detection`): their pivot pass is always measured, as a misdetected pivot
    sentence is steered, and their units carry ``detection_accuracy``, the share of the language's held-out
    texts the detector identifies (``off`` and ``on``). With ``n_translations``, each unit of a language other than
    the pivot also has ``chrf``: corpus chrF of greedy ``shots``-shot translations into the pivot of the held-out
    sentences ``shots .. shots + n_translations`` (the plan edits the source sentence's tokens only), with the
    paired-bootstrap interval of its change.

    Each (language, setting) is a unit: ``on_unit`` receives its rows as soon as they are computed, and the units
    already in ``done`` (an earlier, interrupted evaluation) are taken from it instead of being computed again.
    """
    sites = [Site(layer, component) for layer in range(n_layers(model) + 1)]
    finished = {} if done is None else {key: part for key, part in done.groupby(["method", "setting", "language"])}
    todo = [(lang, s) for lang in languages for s in settings if (s.method, s.setting, lang) not in finished]

    def measured(lang: str) -> _Measured:
        texts = test.texts(lang)
        pooled, loss = pooled_and_loss(
            model, tokenizer, texts, sites, pooling=pooling, n_loss=n_loss, tokenization=tokenization
        )
        if fidelity is None or not fidelity.knows(lang):
            return _Measured(pooled, loss, {})
        outputs = continuations(model, tokenizer, texts[:n_prompts], tokenization=tokenization)
        return _Measured(pooled, loss, fidelity.pass_rates(outputs, lang))

    if todo:
        reference, pivot_off = pooled_and_loss(
            model, tokenizer, test.texts(pivot), sites, pooling=pooling, n_loss=n_loss, tokenization=tokenization
        )
    pending = {lang for lang, _ in todo}
    tasks = {
        lang: translation_task(test, lang, pivot, n_translations, shots=shots)
        for lang in pending
        if n_translations and lang != pivot
    }
    translated: dict[str, list[str]] = {}
    accuracies: dict[str, float] = {}
    units = []
    with progress_bar(progress, "evaluate") as bar:
        add_steps(bar, len(todo) + len(pending))
        for lang in languages:
            if lang in pending:
                bar.set_description(f"evaluate {lang}: unsteered")
                off = measured(lang)
                if lang in tasks:
                    translated[lang] = translate(model, tokenizer, tasks[lang], tokenization=tokenization)
                bar.update(1)
            for setting in settings:
                head = (setting.method, setting.setting, lang)
                if head in finished:
                    units.append(finished[head])
                    continue
                bar.set_description(f"evaluate {lang}: {setting.method}")
                if setting.detected and detector is None:
                    raise EvaluationError(
                        f"setting {setting.method} {setting.setting} is gated by detection: pass a detector"
                    )
                gate = (lambda language: detector) if setting.detected else (lambda language: language)
                with steer(model, setting.plan(lang, test.texts(lang)), languages=gate(lang)) as handle:
                    on = measured(lang)
                    touched = handle.touches(pivot)
                # A plan gated to other languages leaves the pivot exactly as it is; one that can edit it (LEACE
                # erases every language) is compared with the pivot as the plan leaves it: the measured pair is
                # the steered pair.
                reference_on, pivot_on = reference, pivot_off
                if touched:
                    pivot_all = test.texts(pivot)
                    with steer(model, setting.plan(lang, pivot_all), languages=gate(pivot)):
                        reference_on, pivot_on = pooled_and_loss(
                            model,
                            tokenizer,
                            pivot_all,
                            sites,
                            pooling=pooling,
                            n_loss=n_loss,
                            tokenization=tokenization,
                        )
                references = (reference, reference_on)
                rows = _alignment_rows(head, setting.layer, references, off.pooled, on.pooled, metrics, n_boot)
                rows.append((*head, setting.layer, "loss_target", off.loss, on.loss, on.loss - off.loss, None, None))
                rows.append((*head, setting.layer, "loss_pivot", pivot_off, pivot_on, pivot_on - pivot_off, None, None))
                rows += [
                    (
                        *head,
                        setting.layer,
                        name,
                        off.fidelity[name],
                        on.fidelity[name],
                        on.fidelity[name] - off.fidelity[name],
                        None,
                        None,
                    )
                    for name in off.fidelity
                ]
                if lang in tasks:
                    try:
                        on_translated = translate(
                            model,
                            tokenizer,
                            tasks[lang],
                            partial(setting.plan, lang),
                            languages=gate(lang),
                            tokenization=tokenization,
                        )
                    except SourceSteeringError as error:
                        notice(f"{setting.method} ({setting.setting}), {lang}: {error}")
                    else:
                        change = chrf_change(tasks[lang].references, translated[lang], on_translated, n_boot=n_boot)
                        rows.append((*head, setting.layer, "chrf", *change))
                if setting.detected:
                    if lang not in accuracies:
                        accuracies[lang] = detection_accuracy(
                            model, tokenizer, detector, test.texts(lang), lang, tokenization
                        )
                    accuracy = accuracies[lang]
                    rows.append((*head, setting.layer, "detection_accuracy", accuracy, accuracy, 0.0, None, None))
                units.append(pd.DataFrame(rows, columns=COLUMNS))
                if on_unit is not None:
                    on_unit(units[-1])
                bar.update(1)
    return pd.concat(units, ignore_index=True) if units else pd.DataFrame(columns=COLUMNS)


def detection_accuracy(
    model: nn.Module,
    tokenizer,
    detector: LanguageDetector,
    texts: Sequence[str],
    language: str,
    tokenization: Tokenization = Tokenization(),
) -> float:
    """The share of ``texts`` (all in ``language``) the detector identifies as ``language``."""
    pooled = capture(model, tokenizer, texts, [detector.site], pooling=detector.pooling, tokenization=tokenization)
    return sum(found == language for found in detector.predict(pooled[detector.site])) / len(texts)


def _alignment_rows(head, first_layer, references, off, on, metrics, n_boot) -> list[tuple]:
    """Per layer and metric, the pair (pivot, language) without the plan against the pair with it:
    ``references`` is the pivot's pooled activations (without, with)."""
    reference_off, reference_on = references
    rows = []
    for metric in metrics:
        score = PAIR_METRICS[metric]
        per_layer_off, per_layer_on = [], []
        for site in sorted(reference_off):
            before = score(reference_off[site], off[site]).double()
            after = score(reference_on[site], on[site]).double()
            rows.append(_paired_row(head, site.layer, metric, before, after, n_boot))
            if site.layer >= first_layer:
                per_layer_off.append(before)
                per_layer_on.append(after)
        mean_off, mean_on = torch.stack(per_layer_off).mean(0), torch.stack(per_layer_on).mean(0)
        rows.append(_paired_row(head, first_layer, f"{metric}_mean_after", mean_off, mean_on, n_boot))
    return rows


def _paired_row(head, layer: int, metric: str, before: Tensor, after: Tensor, n_boot: int) -> tuple:
    """off, on, delta and the bootstrap interval of the delta, from per-sentence scores."""
    low, high = bootstrap_ci(lambda a, b: b - a, before, after, n_boot=n_boot)
    return (*head, layer, metric, before.mean().item(), after.mean().item(), (after - before).mean().item(), low, high)
