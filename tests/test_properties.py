"""Property-based tests (hypothesis): the corpus readers, the schedules and the pooling against simple
references, on random corpora, padding layouts and spans."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probes.capture import ForwardContext, pool
from probes.data import read_jsonl, read_tsv
from steer.schedule import Schedule, ScheduleError

CODES = ["eng", "deu", "fra", "zho-CN", "srp-Latn", "arb", "hin", "jpn"]
WORDS = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs")), min_size=1, max_size=6)
TEXT = st.lists(WORDS, min_size=1, max_size=5).map(" ".join)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def corpora(draw):
    languages = draw(st.lists(st.sampled_from(CODES), min_size=1, max_size=4, unique=True))
    n = draw(st.integers(1, 6))
    texts = {lang: draw(st.lists(TEXT, min_size=n, max_size=n)) for lang in languages}
    ids = draw(st.lists(st.from_regex(r"[a-z]{1,4}-[0-9]{1,3}", fullmatch=True), min_size=n, max_size=n, unique=True))
    return ids, texts


@FAST
@given(corpora())
def test_tsv_and_jsonl_read_back_what_was_written(tmp_path_factory, corpus):
    ids, texts = corpus
    folder = tmp_path_factory.mktemp("corpus")
    languages = list(texts)
    tsv = folder / "c.tsv"
    rows = ["\t".join(["id", *languages])] + [
        "\t".join([ids[i], *(texts[l][i] for l in languages)]) for i in range(len(ids))
    ]
    tsv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    jsonl = folder / "c.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"id": ids[i], **{l: texts[l][i] for l in languages}}, ensure_ascii=False) + "\n"
            for i in range(len(ids))
        ),
        encoding="utf-8",
    )
    for read in (read_tsv(tsv), read_jsonl(jsonl)):
        assert read.ids == tuple(ids) and read.languages == tuple(languages)
        assert all(read.texts(lang) == [t.strip() for t in texts[lang]] for lang in languages)


@st.composite
def padded_prompts(draw):
    """A prompt batch: per example a length >= 1, left or right padding."""
    lengths = draw(st.lists(st.integers(1, 7), min_size=1, max_size=4))
    left = draw(st.booleans())
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        if left:
            mask[row, width - n :] = 1
        else:
            mask[row, :n] = 1
    return lengths, mask


def prompt_context(mask: torch.Tensor) -> ForwardContext:
    batch, width = mask.shape
    return ForwardContext(
        valid=mask.bool(),
        position=mask.cumsum(1) - 1,
        prompt_length=mask.sum(1),
        decode_step=torch.zeros_like(mask),
        prompt_mask=mask.bool(),
        columns=torch.arange(width),
        example=torch.arange(batch),
        counted=mask.bool(),
        input_ids=None,
        call=0,
        first_new=0,
    )


BOUND = st.one_of(st.none(), st.integers(-8, 8))


@FAST
@given(padded_prompts(), BOUND, BOUND)
def test_prefill_spans_select_what_python_slicing_selects(prompts, start, stop):
    """A span selects ``range(L)[start:stop]`` of each prompt; one that reaches past a prompt (a bound outside
    -L..L, or nothing selected) is an error, as are mixed signs and reversed spans."""
    lengths, mask = prompts
    try:
        schedule = Schedule(prefill=(start, stop), decode="none")
    except ScheduleError:
        signs = {bound < 0 for bound in (start, stop) if bound is not None}
        assert len(signs) == 2 or (start is not None and stop is not None and start >= stop)
        return
    expected, reaches_past = [], False
    for n in lengths:
        picked = list(range(n))[start:stop]
        outside = any(bound is not None and not -n <= bound <= n for bound in (start, stop))
        reaches_past |= outside or not picked
        expected.append(picked)
    if reaches_past:
        with pytest.raises(ScheduleError, match="reaches past the prompt"):
            schedule.select(prompt_context(mask))
        return
    chosen = schedule.select(prompt_context(mask))
    position = mask.cumsum(1) - 1
    got = [sorted(position[row][chosen[row]].tolist()) for row in range(len(lengths))]
    assert got == expected


@FAST
@given(
    st.lists(st.lists(st.booleans(), min_size=5, max_size=5).filter(any), min_size=1, max_size=4),
    st.integers(1, 3),
    st.sampled_from(["mean", "weighted", "last", "max", "active"]),
    st.integers(0, 10_000),
)
def test_pooling_equals_a_per_sentence_reference(mask_rows, width, method, seed):
    mask = torch.tensor(mask_rows)
    hidden = torch.randn(*mask.shape, width, generator=torch.Generator().manual_seed(seed))
    hidden[~mask] = float("nan")  # pads never enter
    got = pool(hidden, mask, method)
    for row in range(len(mask)):
        kept = [hidden[row, t].tolist() for t in range(mask.shape[1]) if mask[row, t]]
        columns = list(zip(*kept))
        if method == "mean":
            expected = [sum(c) / len(c) for c in columns]
        elif method == "weighted":  # MEXA: weights 1..T over the kept tokens
            total = len(kept) * (len(kept) + 1) / 2
            expected = [sum((i + 1) * v for i, v in enumerate(c)) / total for c in columns]
        elif method == "last":
            expected = kept[-1]
        elif method == "max":
            expected = [max(c) for c in columns]
        else:
            expected = [sum(v > 0 for v in c) / len(c) for c in columns]
        assert got[row].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
