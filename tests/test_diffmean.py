"""DiffMean (CLaS-Bench): unit difference of token means of the residual stream, added with strength alpha."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny
from probes.data import demo_corpus
from probes.find import gap_norm
from probes.model import n_layers
from steer.interventions import AddVector
from steer.keeping import DIFFMEAN_SCALES
from steer.methods import fit_methods, settings


@pytest.fixture(scope="module")
def found():
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu", "rus"], 12)
    return corpus, fit_methods(model, tokenizer, corpus, languages=["deu", "rus"], methods=["diffmean"])


def token_means(texts: list[str]) -> torch.Tensor:
    """Per layer, the mean hidden state over every token but BOS, one text at a time (no padding at all)."""
    model, tokenizer = tiny("llama")
    total, count = 0, 0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids
            assert ids[0, 0] == tokenizer.bos_token_id
            hidden = torch.stack(model(ids, output_hidden_states=True).hidden_states)[:, 0, 1:].double()
            total, count = total + hidden.sum(1), count + hidden.shape[1]
    return total / count


def test_diffmean_is_the_unit_difference_of_token_means(found):
    corpus, findings = found
    model, _ = tiny("llama")
    pivot = token_means(corpus.texts("eng"))
    for lang in ("deu", "rus"):
        difference = pivot - token_means(corpus.texts(lang))
        vector = findings["diffmean"][lang]
        for layer in range(1, n_layers(model)):  # the last hidden state has the final norm applied; resid not
            expected = difference[layer] / difference[layer].norm()
            assert torch.allclose(vector.vectors[layer].double(), expected, atol=1e-5), (lang, layer)
            assert gap_norm(vector, layer) == pytest.approx(difference[layer].norm().item(), rel=1e-5)


def test_diffmean_settings_add_alpha_times_the_unit_vector_at_one_layer(found):
    corpus, findings = found
    grid = [s for s in settings(findings) if s.method == "diffmean"]
    assert len(grid) == len(DIFFMEAN_SCALES)
    for setting, scale in zip(grid, DIFFMEAN_SCALES):
        ((edit, schedule),) = setting.plan("rus", corpus.texts("rus"))
        assert isinstance(edit, AddVector) and edit.layers == (setting.layer,)
        assert schedule.only == ("rus",)
        vector = findings["diffmean"]["rus"]
        assert edit.alpha == pytest.approx(scale * gap_norm(vector, setting.layer))
        assert torch.equal(edit.vectors[setting.layer], vector.vectors[setting.layer])
