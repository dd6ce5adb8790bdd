"""Language codes: ISO 639-3 with an optional script or region (``eng``, ``zho-CN``, ``srp-Latn``).

:func:`normalize_language` maps ISO 639-1 codes, FLORES-style ``xxx_Scrp`` codes and case variants to that scheme.
"""

from __future__ import annotations

import re

from probes.errors import XlalignError


class CorpusError(XlalignError):
    """Bad corpus input; the message names file, line, language and counts."""


_CODE = re.compile(r"([A-Za-z]{2,3})(?:([-_])([A-Za-z]{2,4}))?")

_ISO_639_1 = {
    "am": "amh",
    "ar": "arb",
    "bg": "bul",
    "bn": "ben",
    "ca": "cat",
    "cs": "ces",
    "da": "dan",
    "de": "deu",
    "el": "ell",
    "en": "eng",
    "es": "spa",
    "et": "est",
    "eu": "eus",
    "fa": "fas",
    "fi": "fin",
    "fr": "fra",
    "gl": "glg",
    "he": "heb",
    "hi": "hin",
    "hr": "hrv",
    "hu": "hun",
    "hy": "hye",
    "id": "ind",
    "it": "ita",
    "ja": "jpn",
    "ka": "kat",
    "kk": "kaz",
    "ko": "kor",
    "lt": "lit",
    "lv": "lav",
    "mr": "mar",
    "ms": "msa",
    "nb": "nob",
    "nl": "nld",
    "nn": "nno",
    "no": "nor",
    "pl": "pol",
    "pt": "por",
    "ro": "ron",
    "ru": "rus",
    "sk": "slk",
    "sl": "slv",
    "sr": "srp",
    "sv": "swe",
    "sw": "swa",
    "ta": "tam",
    "te": "tel",
    "th": "tha",
    "tr": "tur",
    "uk": "ukr",
    "ur": "urd",
    "vi": "vie",
    "yo": "yor",
    "zh": "zho-CN",
}

# The script a language is usually written in: FLORES-style 'xxx_Scrp' drops it. Languages written in
# several scripts (srp, aze, uzb, snd, ckb, ...) are left out on purpose, so their script is kept, as NTREX does.
_USUAL_SCRIPT = {
    language: script
    for script, languages in {
        "Latn": "afr bos cat ces cym dan deu eng est eus fil fin fra gle glg hau hrv hun ibo ind isl ita lav lit "
        "ltz mlt msa nld nno nob pol por ron slk slv som spa sqi swa swe swh tgl tur vie wol xho yor zsm zul",
        "Cyrl": "bak bel bul kaz kir mkd rus tat ukr",
        "Arab": "arb ary arz fas pes prs pus urd",
        "Deva": "hin mar nep npi",
        "Beng": "ben",
        "Ethi": "amh tir",
        "Geor": "kat",
        "Grek": "ell",
        "Gujr": "guj",
        "Guru": "pan",
        "Hang": "kor",
        "Hant": "yue",
        "Hebr": "heb",
        "Jpan": "jpn",
        "Khmr": "khm",
        "Knda": "kan",
        "Laoo": "lao",
        "Mlym": "mal",
        "Mymr": "mya",
        "Sinh": "sin",
        "Taml": "tam",
        "Telu": "tel",
        "Thai": "tha",
        "Tibt": "bod",
    }.items()
    for language in languages.split()
}

# Chinese scripts are written as regions, to match NTREX ('zho-CN', 'zho-TW'); FLORES+ calls it 'cmn'.
_SCRIPT_AS_REGION = {
    ("zho", "Hans"): "zho-CN",
    ("zho", "Hant"): "zho-TW",
    ("cmn", "Hans"): "zho-CN",
    ("cmn", "Hant"): "zho-TW",
}


def normalize_language(code: str) -> str:
    """Map a language code to the project's scheme: ISO 639-3 plus an optional script or region.

    ``'eng_Latn' -> 'eng'``, ``'srp_Latn' -> 'srp-Latn'``, ``'zho_Hans' -> 'zho-CN'``, ``'de' -> 'deu'``,
    ``'zho-cn' -> 'zho-CN'``, ``'srp-latn' -> 'srp-Latn'``. Idempotent on its own output.
    """
    match = _CODE.fullmatch(code.strip()) if isinstance(code, str) else None
    if match is None:
        raise CorpusError(
            f"invalid language code {code!r}: expected ISO 639-3 (or 639-1) with an optional script or region, "
            "e.g. 'eng', 'de', 'zho-CN', 'srp-Latn', 'eng_Latn'"
        )
    base, separator, suffix = match.group(1).lower(), match.group(2), match.group(3)
    if len(base) == 2:
        if base not in _ISO_639_1:
            raise CorpusError(f"unknown two-letter language code {code!r}: use its ISO 639-3 code (e.g. 'eng', 'deu')")
        if suffix is None:
            return _ISO_639_1[base]
        base = _ISO_639_1[base].split("-")[0]
    if suffix is None:
        return base
    if len(suffix) == 4:
        script = suffix.title()
        if (base, script) in _SCRIPT_AS_REGION:
            return _SCRIPT_AS_REGION[base, script]
        if separator == "_" and _USUAL_SCRIPT.get(base) == script:
            return base
        return f"{base}-{script}"
    return f"{base}-{suffix.upper() if len(suffix) == 2 else suffix.lower()}"
