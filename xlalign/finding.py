"""``xlalign find``: fit one registered method on a corpus and save what it found as artifacts that ``xlalign
steer`` applies (:mod:`steer.methods`: the same records and the same fitting as the closed loop)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from probes.capture import Tokenization
from probes.capture.distributed import ranks
from probes.data import ParallelCorpus, normalize_language
from probes.model import Loading, arch_table, n_layers
from steer.choices import FIND_KINDS
from steer.methods import canonical, fit_methods
from steer.methods import method as registered
from xlalign.choices import DEFAULT_K
from xlalign.errors import JobError
from xlalign.loading import takes_loading
from xlalign.jobs import job_bar, open_corpus, open_model, refuse_overwrite
from xlalign.loop_options import corpus_language
from xlalign.presets import takes_preset


@takes_preset("find")
@takes_loading
def find(
    kind: str | None = None,
    out: str | os.PathLike | None = None,
    *,
    method: str | None = None,
    model="default",
    tokenizer=None,
    corpus: ParallelCorpus | str = "demo",
    pivot: str = "eng",
    k: int | None = None,
    bottom_k: int = 0,
    components: Sequence[str] | None = None,
    pooling: str = "mean",
    tokenization: Tokenization = Tokenization(),
    loading: Loading = Loading(),
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Fit ``method`` (default: ``kind``'s usual one, :data:`steer.choices.FIND_KINDS`) and save its artifacts.
    Returns the files written: one file ``out`` for what covers every language (neurons, an eraser), one file per
    non-pivot language in the directory ``out`` for shift vectors and maps (``<kind>.<language>.safetensors``).

    AP experts: the ``k`` units of highest and ``bottom_k`` of lowest AP per language among the units of
    ``components`` (default ``mlp_act``), ranked together, over sentences pooled with ``pooling`` (``mean`` as
    Kojima et al., ``max`` as Suau et al.); several components give one file per component in the directory
    ``out`` (``ap.<component>.safetensors``). CLAIM: the ``k`` best heads over every layer."""
    if out is None:
        raise JobError("find: name where to write with out= (--out)")
    if kind is not None and kind not in FIND_KINDS:
        raise JobError(f"find: unknown kind {kind!r}; choose from {', '.join(FIND_KINDS)}")
    if method is None and kind is None:
        raise JobError(f"find: name a --method or a kind ({', '.join(FIND_KINDS)})")
    name = canonical(method or FIND_KINDS[kind])
    record = registered(name)
    if record.finds is None:
        raise JobError(f"find --method {name}: {record.unsaved}")
    if kind is not None and record.finds != kind:
        raise JobError(
            f"find {kind} --method {name}: {name} finds a {record.finds}; run `xlalign find "
            f"{record.finds} --method {name}` or omit the kind"
        )
    kind = record.finds
    if (components or bottom_k or pooling != "mean") and name != "ap":
        raise JobError(f"find --method {name}: components, bottom_k and pooling are options of AP experts")
    parallel = open_corpus(corpus)
    out = Path(out)
    if kind == "neurons":  # neuron finders compare every language; the pivot need not be in the corpus
        pivot = normalize_language(pivot)
        if pivot not in parallel.languages:
            pivot = parallel.languages[0]
    else:
        pivot = corpus_language(pivot, parallel, "pivot")
    languages = [lang for lang in parallel.languages if lang != pivot]
    network, tokenizer = open_model(model, tokenizer, loading)
    linear = list(arch_table(network).linear)  # "linear": every linear projection the family has, as Kojima et al.
    units = list(dict.fromkeys(c for n in (components or ["mlp_act"]) for c in (linear if n == "linear" else [n])))
    group = ranks()
    if group.world > 1 and name != "lape":
        raise JobError(
            f"find --method {name} is not split across processes: run it as one process "
            "(only `find neurons --method lape`, `capture` and `run` split their work under torchrun)"
        )
    options = {
        "lape_languages": parallel.languages,
        "ap_languages": parallel.languages,
        "ap_components": units,
        "ap_pooling": pooling,
        "ap_bottom_k": bottom_k,
        "ap_k": DEFAULT_K["ap"] if k is None else k,
        "n_heads": k or DEFAULT_K["claim"],
        "claim_layers": range(1, n_layers(network) + 1),
    }
    several = name == "ap" and len(units) > 1  # AP: one NeuronSet per component
    if kind in ("neurons", "eraser"):  # one artifact for every language
        targets = {c: out / f"ap.{c}.safetensors" for c in units} if several else {None: out}
    else:
        targets = {lang: out / f"{kind}.{lang}.safetensors" for lang in languages}
    for path in targets.values():
        refuse_overwrite(path, overwrite)
    with job_bar(progress, f"find {kind} ({name}) into {out}") as bar:
        found = fit_methods(
            network,
            tokenizer,
            parallel,
            languages=languages,
            pivot=pivot,
            methods=[name],
            tokenization=tokenization,
            progress=bar,
            split=True,
            **options,
        )[name]
    if name == "ap" and not several:
        found = found[units[0]]
    artifacts = found if isinstance(found, dict) else {None: found}
    if set(artifacts) != set(targets):
        raise JobError(f"method {name} found {sorted(map(str, artifacts))}, expected {sorted(map(str, targets))}")
    group.on_main(lambda: save_all([artifacts[key] for key in targets], list(targets.values()), overwrite))
    return list(targets.values())


def save_all(artifacts: Sequence, paths: Sequence[Path], overwrite: bool) -> list[Path]:
    """Save each artifact to its path; if one fails (a full disk), the files this call wrote are removed, so a
    failed job leaves nothing that would block its rerun."""
    written = []
    try:
        for artifact, path in zip(artifacts, paths, strict=True):
            written.append(artifact.save(path, overwrite=overwrite))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
