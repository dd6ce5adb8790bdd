"""Paper presets: every choice one method's released code makes, for the commands that run that method.

``xlalign capture --preset mexa ...`` (or ``xl.capture(..., preset="mexa")``) sets the options below; an option
given explicitly wins. Each preset names the reference file it follows and what it cannot reproduce here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Mapping

from probes.data import ParallelCorpus, load_corpus
from steer.choices import SIGMAS
from probes.errors import XlalignError


class PresetError(XlalignError):
    """A preset that does not exist or does not apply to the command."""


@dataclass(frozen=True)
class Preset:
    """``options[command]``: option name (the command line's, with ``_`` for ``-``) -> value. ``find`` presets
    name the kind they find in ``kind``."""

    name: str
    reference: str
    cannot: str
    options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    kind: str | None = None

    def for_command(self, command: str, kind: str | None = None) -> dict[str, object]:
        if command not in self.options:
            raise PresetError(f"preset {self.name!r} applies to {', '.join(self.options)}, not {command}")
        if command == "find" and kind is not None and kind != self.kind:
            raise PresetError(f"preset {self.name!r} is for `find {self.kind}`, not `find {kind}`")
        return dict(self.options[command])


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "mexa",
            "cisnlp/Mexa: compute_mexa.py on the embeddings its extraction writes (output_hidden_states, pooled "
            "embd_weighted: its default), the first 100 FLORES-200 devtest sentences",
            "FLORES-200 is not bundled: pass its directory with --corpus; the paper's models and language list",
            {
                "capture": {"sites": "hidden", "pooling": "weighted", "max_sentences": 100},
                "measure": {"component": "hidden", "metrics": ["mexa"]},
            },
        ),
        Preset(
            "lape",
            "RUCAIBox/Language-Specific-Neurons: activation.py (counts act_fn > 0 over token ids without BOS), "
            "identify.py (top_rate 0.01, filter_rate 0.95, activation_bar_ratio 0.95): xlalign's LAPE defaults",
            "its 100M-token Wikipedia samples, counted in fixed-length chunks; here the corpus's sentences",
            {"find": {"method": "lape"}},
            kind="neurons",
        ),
        Preset(
            "kojima",
            "kojima-takeshi188/lang_neuron: selfcond/models.py (the outputs of every linear layer, mean-pooled "
            "over tokens), scripts/make_limited_expert.py (top 1000 and bottom 1000 units by AP), main_prod_env.sh "
            "(forced to on_p50: xlalign steer with every file)",
            "the sampling of 500 positive and 2500 negative sentences per language (use a corpus of that size) "
            "and its generation experiments' decoding settings",
            {"find": {"method": "ap", "components": ["linear"], "k": 1000, "bottom_k": 1000, "pooling": "mean"}},
            kind="neurons",
        ),
        Preset(
            "suau",
            "apple/ml-selfcond: selfcond/models.py (the outputs of every linear layer, max-pooled over tokens), "
            "README (the top 50 units by AP forced to on_p50)",
            "its code reads GPT-2 only (here each family's linear projections); its concept datasets",
            {"find": {"method": "ap", "components": ["linear"], "k": 50, "bottom_k": 0, "pooling": "max"}},
            kind="neurons",
        ),
        Preset(
            "incline",
            "weixuan-wang123/INCLINE: intervention_llama.py / intervention.py (500 training pairs, every second "
            "one code-switched, token-mean MLP outputs, lstsq per layer; sigma swept over -1..1 at the last prompt "
            "token of every layer, from a clean pass)",
            "its task benchmarks (XNLI, XCOPA, MGSM, ...): the closed loop measures alignment, loss and the output "
            "language instead",
            {
                "find": {"method": "incline", "max_sentences": 500},
                "evaluate": {"methods": ["incline"], "incline_sigmas": list(SIGMAS)},
                "run": {"methods": ["incline"], "incline_sigmas": list(SIGMAS)},
            },
            kind="map",
        ),
        Preset(
            "bandarkar",
            "lucasbandarkar/xl_moe_alignment: routing_analysis/get_routing_weights.py, analysis_helpers.py (mean "
            "over tokens of the top-k renormalised weights, entropy-normalised JSD per sentence); promoting the "
            "pivot's experts in the middle layers",
            "its FLORES/Belebele evaluation of pretrained MoE models (none is installable here)",
            {
                "capture": {"sites": "router", "pooling": "mean"},
                "measure": {"component": "router", "importance": "weight"},
                "evaluate": {"methods": ["router"]},
                "run": {"methods": ["router"]},
            },
        ),
        Preset(
            "steermoe",
            "JACKPURCELL/SteerMoE: demo.py (calc_risk_diff: token-level top-k activation frequency, behaviour 1 "
            "minus behaviour 2), src/utils.py (steer_moe: sorted by |risk_diff|, at most k forced per layer), "
            "src/modeling_vllm (forced scores set to max + eps, banned to min - eps, from the unedited scores)",
            "its paired behaviour datasets and vLLM; here behaviour 1 is the pivot's sentences, 2 the language's, "
            "and as many experts as routed layers are forced and banned (the paper sweeps the count)",
            {"evaluate": {"methods": ["steermoe"]}, "run": {"methods": ["steermoe"]}},
        ),
        Preset(
            "claim",
            "CLAIM (head steering, our reading of the paper): per-head probes in the middle layers, the most "
            "language-specific heads shifted by their pivot-minus-language mean",
            "the paper's released code (none was found); its head count and benchmarks",
            {"find": {"method": "claim"}, "evaluate": {"methods": ["claim"]}, "run": {"methods": ["claim"]}},
            kind="shift",
        ),
    )
}


def names_for(command: str) -> list[str]:
    """The presets that apply to ``command``."""
    return [name for name, preset in PRESETS.items() if command in preset.options]


def preset_options(name: str, command: str, kind: str | None = None) -> dict[str, object]:
    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name].for_command(command, kind)


def takes_preset(command: str) -> Callable:
    """Give a job a ``preset=`` keyword: its options fill in the keywords the caller did not pass
    (``max_sentences`` cuts a corpus given by name or object)."""

    def wrap(job: Callable) -> Callable:
        @functools.wraps(job)
        def call(*args, preset: str | None = None, **kwargs):
            if preset is None:
                return job(*args, **kwargs)
            kind = args[0] if command == "find" and args else kwargs.get("kind")
            options = preset_options(preset, command, kind)
            limit = options.pop("max_sentences", None)
            merged = {**options, **kwargs}
            if limit is not None:
                corpus = merged.get("corpus", "demo")
                merged["corpus"] = (corpus if isinstance(corpus, ParallelCorpus) else load_corpus(corpus)).subset(
                    None, limit
                )
            return job(*args, **merged)

        return call

    return wrap
