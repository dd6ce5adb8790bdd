"""Few-shot translation into the pivot: prompts and source masks, steering of the source tokens only (equal to a
raw hook on those positions of the prompt pass), batched == one at a time, chrF and its interval equal to
sacrebleu's own corpus score, and in the evaluation the chrf rows equal direct computations."""

from __future__ import annotations

import pytest
import torch
from sacrebleu.metrics import CHRF

from conftest import tiny
from incline_reference import random_map, reference_generation
from probes.capture import Tokenization
from probes.data import demo_corpus
from probes.model import Site, locate
from steer.evaluate import Setting, evaluate
from steer.incline import incline
from steer.interventions import AddVector
from steer.schedule import Schedule
from steer.translation import chrf, chrf_change, language_name, new_tokens, source_tokens, translate, translation_task


@pytest.fixture(scope="module")
def corpus():
    return demo_corpus().subset(["eng", "deu", "rus"], 24)


def test_language_names():
    assert [language_name(c) for c in ("deu", "zho-CN", "arb", "hin", "eng")] == [
        "German",
        "Chinese",
        "Arabic",
        "Hindi",
        "English",
    ]


def test_prompts_show_the_first_pairs_and_end_with_the_source(corpus):
    task = translation_task(corpus, "rus", "eng", 4, shots=2)
    russian, english = corpus.texts("rus"), corpus.texts("eng")
    assert task.references == english[2:6]
    for k, (prompt, (start, end)) in enumerate(zip(task.prompts, task.spans)):
        assert prompt == (
            f"Russian: {russian[0]}\nEnglish: {english[0]}\n\nRussian: {russian[1]}\nEnglish: "
            f"{english[1]}\n\nRussian: {russian[2 + k]}\nEnglish:"
        )
        assert prompt[start:end] == russian[2 + k]
    with pytest.raises(ValueError, match="needs 26 sentences; the corpus has 24"):
        translation_task(corpus, "rus", "eng", 23, shots=3)


def test_the_source_mask_covers_exactly_the_source_tokens(corpus):
    model, tokenizer = tiny("llama")
    task = translation_task(corpus, "deu", "eng", 3)
    ids = Tokenization().encode(tokenizer, task.prompts)
    for mask, row, prompt, (start, end) in zip(
        source_tokens(tokenizer, task, Tokenization()), ids, task.prompts, task.spans
    ):
        chosen = mask.nonzero().flatten()
        assert (chosen.diff() == 1).all(), "one contiguous run of tokens"
        assert tokenizer.decode([row[i] for i in chosen]).strip() == prompt[start:end]
        before = tokenizer.decode(row[: int(chosen[0])], skip_special_tokens=True)
        assert prompt[:start].startswith(before) and len(before) >= start - 1
    with pytest.raises(ValueError, match="chat_template"):
        source_tokens(tokenizer, task, Tokenization(chat_template=True))


def raw_reference(model, tokenizer, prompt: str, source: torch.Tensor, layer: int, vector: torch.Tensor) -> str:
    """One prompt, by hand: a torch hook adds ``vector`` at ``layer`` on the ``source`` positions of the prompt's own
    pass only; greedy decoding with the same budget and stop string, first line."""
    module, side = locate(model, Site(layer, "resid"))
    assert side == "output"
    calls = []

    def hook(_module, _args, out):
        hidden = out[0] if isinstance(out, tuple) else out
        calls.append(hidden.shape[1])
        if len(calls) == 1:
            hidden = hidden + source[None, :, None] * vector
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    encoded = tokenizer(prompt, return_tensors="pt")
    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            generated = model.generate(
                **encoded,
                do_sample=False,
                max_new_tokens=new_tokens(source),
                stop_strings=["\n"],
                tokenizer=tokenizer,
                pad_token_id=tokenizer.pad_token_id,
            )
    finally:
        handle.remove()
    assert calls[0] == encoded["input_ids"].shape[1] and set(calls[1:]) <= {1}, "the prompt pass, then decode steps"
    text = tokenizer.decode(generated[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    return text.strip().split("\n")[0].strip()


def test_steering_touches_the_source_tokens_of_the_prompt_pass_only_and_batches_change_nothing(corpus):
    model, tokenizer = tiny("llama")
    task = translation_task(corpus, "deu", "eng", 4)
    vector = 6 * torch.randn(64, generator=torch.Generator().manual_seed(3))

    def plan(prompts):  # decode="all" and every prompt token: translate narrows it to the source
        return [(AddVector({2: vector}), Schedule(only=("deu",)))]

    batched = translate(model, tokenizer, task, plan, languages="deu", tokenization=Tokenization(batch_size=4))
    masks = source_tokens(tokenizer, task, Tokenization())
    expected = [raw_reference(model, tokenizer, p, m, 2, vector) for p, m in zip(task.prompts, masks)]
    assert batched == expected
    plain = translate(model, tokenizer, task)
    assert plain == [raw_reference(model, tokenizer, p, m, 2, 0 * vector) for p, m in zip(task.prompts, masks)]
    assert plain != batched, "the edit changes the translations"
    assert translate(model, tokenizer, task, plan, languages="rus") == plain, "gated out: untouched"


@pytest.mark.parametrize("mode", ["code", "interpolate"])
def test_incline_translates_with_its_own_protocol_the_last_prompt_token_from_a_clean_pass(corpus, mode):
    """INCLINE edits the last token of the whole translation prompt at every layer, targets from a clean pass of
    that prompt, as its released code evaluates translation; not the source tokens."""
    model, tokenizer = tiny("llama")
    task = translation_task(corpus, "deu", "eng", 3)
    fitted = random_map(model)

    def plan(prompts):
        return [incline(model, tokenizer, prompts, fitted, 0.5, mode=mode)]

    steered = translate(model, tokenizer, task, plan, tokenization=Tokenization(batch_size=3))
    masks = source_tokens(tokenizer, task, Tokenization())
    expected = []
    for prompt, mask in zip(task.prompts, masks):
        tokens, _ = reference_generation(model, tokenizer, prompt, fitted, 0.5, 1.0, new_tokens(mask), mode=mode)
        expected.append(tokenizer.decode(tokens, skip_special_tokens=True).strip().split("\n")[0].strip())
    assert steered == expected
    assert steered != translate(model, tokenizer, task), "the edit changes the translations"


def test_chrf_and_its_interval_equal_sacrebleus_corpus_score_on_resamples():
    references = [
        "the cat is on the mat",
        "a dog barks loudly",
        "we went home early today",
        "rain falls in spain",
        "she reads a book",
        "the train was late again",
    ]
    before = ["the cat sat on a mat", "dog barking", "we go home", "the rain in spain", "she read books", "a train"]
    after = [
        "the cat is on the mat",
        "a dog barks",
        "we went home today",
        "rain in spain falls",
        "she reads",
        "the train is late",
    ]
    metric = CHRF()
    assert chrf(after, references) == metric.corpus_score(after, [references]).score
    off, on, delta, low, high = chrf_change(references, before, after, n_boot=300)
    assert (off, on) == (chrf(before, references), chrf(after, references)) and delta == on - off
    # The same resamples (bootstrap_ci's seeded draw), each scored by sacrebleu from the resampled sentence lists.
    rows = torch.randint(6, (300, 6), generator=torch.Generator().manual_seed(0))
    changes = torch.tensor(
        [
            metric.corpus_score([after[i] for i in r], [[references[i] for i in r]]).score
            - metric.corpus_score([before[i] for i in r], [[references[i] for i in r]]).score
            for r in rows.tolist()
        ],
        dtype=torch.float64,
    )
    expected = torch.quantile(changes, torch.tensor([0.025, 0.975], dtype=torch.float64))
    assert (low, high) == pytest.approx(tuple(expected.tolist()), abs=1e-9)
    with pytest.raises(ValueError, match="3 hypotheses against 6 references"):
        chrf_change(references, before[:3], after)


def test_evaluation_chrf_rows_equal_direct_translations(corpus):
    model, tokenizer = tiny("llama")
    vector = 6 * torch.randn(64, generator=torch.Generator().manual_seed(4))
    setting = Setting("shift", "strong", 2, lambda lang, texts: [(AddVector({2: vector}), Schedule(only=(lang,)))])
    table = evaluate(
        model, tokenizer, corpus, [setting], languages=["eng", "rus"], n_boot=50, n_loss=4, n_translations=3, shots=2
    )
    chrf_rows = table[table.metric == "chrf"]
    assert list(chrf_rows.language) == ["rus"], "no translation of the pivot into itself"
    task = translation_task(corpus, "rus", "eng", 3, shots=2)
    off = translate(model, tokenizer, task)
    on = translate(model, tokenizer, task, lambda prompts: setting.plan("rus", prompts), languages="rus")
    row = chrf_rows.iloc[0]
    assert (row.off, row.on) == (chrf(off, task.references), chrf(on, task.references))
    assert (row.ci_low, row.ci_high) == chrf_change(task.references, off, on, n_boot=50)[3:]


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_steered_translation_is_the_same_through_transformerlens_and_nnsight(corpus, backend):
    from probes.model import resolve_model

    model, tokenizer = tiny("llama")
    task = translation_task(corpus, "deu", "eng", 3)
    vector = 6 * torch.randn(64, generator=torch.Generator().manual_seed(3))

    def plan(prompts):
        return [(AddVector({2: vector}), Schedule(only=("deu",)))]

    wrapped = resolve_model(model, tokenizer, backend=backend)[0]
    assert translate(wrapped, tokenizer, task, plan, languages="deu") == translate(
        model, tokenizer, task, plan, languages="deu"
    )
