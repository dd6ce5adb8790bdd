"""xlalign: measure and raise cross-lingual alignment inside multilingual language models.

``import xlalign as xl`` gives the public API of every layer, loaded lazily (importing is cheap)::

    corpus = xl.load_corpus("demo", langs=["eng", "deu"], max_sentences=50)
    model, tokenizer = xl.load_model("default")
    acts = xl.capture_corpus(model, tokenizer, corpus, [xl.Site(layer, "resid") for layer in range(19)])
    xl.measure(acts, pivot="eng", metrics="all")

Layers: ``probes`` reads the model (data, model, capture, analysis, find, artifacts, plots), ``steer`` writes to
it and judges the result, and this package holds the jobs (``run``, ``evaluate``, :mod:`xlalign.jobs`) and CLI.
"""

from importlib import import_module

from probes import __version__

_MODULES = {
    "probes.errors": "XlalignError",
    "probes.data": "ParallelCorpus CorpusError load_corpus demo_corpus read_tsv read_jsonl read_ntrex read_flores read_hf",
    "probes.model": "Loading load_model resolve_model random_model Site SiteError ArchTable Tap RouterTap register_architecture "
    "validate_architecture model_identity n_layers n_heads site_shape router_layers unwrap transformer_bridge BACKENDS "
    "BackendError nnsight_model",
    "probes.capture.passes": "forward generate",
    "probes.capture.remote": "capture_remote",
    "steer.remote": "generate_remote",
    "probes.capture": "Bundle Tokenization record trace watch Recording ForwardContext capture capture_corpus capture_to_store "
    "ActivationStore NeuronStats collect_stats RouterTrace trace_router pool POOLINGS",
    "probes.analysis": "Activations measure mexa retrieval_top1 retrieval_top1_reverse retrieval_topk strong_alignment_map "
    "strong_alignment_ap matched_random_gap linear_cka neuron_overlap cosine_matrix bootstrap_ci ALL_METRICS "
    "measure_routing routing_divergence expert_set_overlap expert_usage language_experts universal_experts "
    "router_matrices word_alignments word_of_token OutputLanguage",
    "probes.find": "LAPE APExperts HeadProbe LanguageIDProbe fit_shift fit_map fit_incline "
    "fit_procrustes mean_shift pca_shift logistic_shift fit_diffmean fit_eraser",
    "probes.artifacts": "NeuronSet ShiftVector LinearMap Eraser load_artifact ArtifactError",
    "steer.apply": "steer SteerHandle",
    "steer.schedule": "Schedule",
    "steer.interventions": "AddVector Ablate SetNeurons ZeroNeurons ApplyMap HeadShift Erase EditContext Intervention",
    "steer.patch": "Patch",
    "steer.router": "RouterBias ForceExperts BanExperts promote_pivot_experts",
    "steer.convert": "to_intervention",
    "steer.evaluate": "next_token_loss continuations",
    "xlalign.closed_loop": "run evaluate",
    "xlalign.loop": "evaluate_methods LoopResult",
    "xlalign.finding": "find",
    "steer.methods": "Method Need register fit_methods",
    "steer.vllm": "vllm_engine VLLMEngine save_vllm_plan",
    "steer.errors": "EngineError",
    "xlalign.export": "export_control_vector import_control_vector read_control_vector ControlVectorError",
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names.split()}
_SUBMODULES = {"plots": "probes.plots", "jobs": "xlalign.jobs", "summary": "steer.summary"}

__all__ = [*_EXPORTS, *_SUBMODULES, "__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return import_module(_SUBMODULES[name])
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xlalign' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
