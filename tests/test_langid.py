"""Language-ID probes: near-perfect on separable languages, near chance on identically distributed ones."""

from __future__ import annotations

import pytest
import torch

from conftest import activations
from probes.analysis import ActivationsError
from probes.find import LanguageIDProbe

LANGUAGES = ("eng", "deu", "jpn")


def synthetic(n: int = 40, d: int = 8):
    """Layer 1: each language shifted along its own axis (separable). Layer 2: one distribution for all."""
    g = torch.Generator().manual_seed(0)
    separable = {lang: torch.randn(n, d, generator=g) + 4.0 * torch.eye(d)[i] for i, lang in enumerate(LANGUAGES)}
    identical = {lang: torch.randn(n, d, generator=g) for lang in LANGUAGES}
    return activations({1: separable, 2: identical})


def test_language_id_is_near_perfect_when_separable_and_near_chance_when_not():
    scores = LanguageIDProbe(cv=5).fit(synthetic()).scores_
    assert list(scores.columns) == ["layer", "language", "metric", "value"]
    accuracy = scores[scores.metric == "langid_acc"].set_index("layer").value
    assert (scores[scores.metric == "langid_acc"].language == "all").all()
    assert accuracy[1] > 0.95
    assert abs(accuracy[2] - 1 / 3) < 0.15
    recall = scores[(scores.metric == "langid_recall") & (scores.layer == 1)].set_index("language").value
    assert sorted(recall.index) == sorted(LANGUAGES) and (recall > 0.9).all()
    # per-language recall averages to accuracy when the classes are balanced
    for layer in (1, 2):
        layer_recall = scores[(scores.metric == "langid_recall") & (scores.layer == layer)].value
        assert layer_recall.mean() == pytest.approx(accuracy[layer])


def test_language_id_flattens_head_sites_and_respects_the_language_subset():
    g = torch.Generator().manual_seed(1)
    data = activations(
        {3: {lang: torch.randn(20, 2, 4, generator=g) + 3.0 * i for i, lang in enumerate(LANGUAGES)}}, component="head"
    )
    scores = LanguageIDProbe(cv=4).fit(data, "head", languages=["eng", "jpn"]).scores_
    assert set(scores.language) == {"all", "eng", "jpn"}
    assert scores[scores.metric == "langid_acc"].value.item() == 1.0


def test_language_id_reports_bad_input():
    with pytest.raises(ValueError, match="at least 5 sentences per class"):
        LanguageIDProbe(cv=5).fit(activations({1: {"eng": torch.randn(3, 2), "deu": torch.randn(3, 2)}}))
    with pytest.raises(ValueError, match="at least two languages"):
        LanguageIDProbe().fit(activations({1: {"eng": torch.randn(10, 2)}}))
    with pytest.raises(ActivationsError, match="languages \\['fra'\\] not captured"):
        LanguageIDProbe().fit(synthetic(), languages=["eng", "fra"])
    with pytest.raises(ActivationsError, match="holds no 'mlp_out' sites"):
        LanguageIDProbe().fit(synthetic(), "mlp_out")
    with pytest.raises(
        ActivationsError, match="resid.1: language 'deu' has shape \\(8, 2\\), another language \\(3, 2\\)"
    ):
        activations({1: {"eng": torch.randn(3, 2), "deu": torch.randn(8, 2)}})
