"""The jobs behind the command line: capture, measure, find, ablate, steer (``run`` and ``evaluate``: see
:mod:`xlalign.closed_loop`). Each takes a model spec or a model object the user holds (with its tokenizer),
a corpus spec or a :class:`~probes.data.ParallelCorpus`, and checks every input before it writes anything.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd
from tqdm.auto import tqdm

from probes.analysis import measure as measure_activations
from probes.analysis import measure_routing
from probes.artifacts import NeuronSet
from probes.capture import ActivationStore, Tokenization, capture_corpus, capture_to_store, collect_stats
from probes.capture.distributed import ranks
from probes.capture.progress import add_steps
from probes.capture.remote import require_key
from probes.data import ParallelCorpus, load_corpus, normalize_language
from probes.data.files import write_text
from probes.find import LAPE, APExperts, HeadProbe, fit_map, fit_shift
from probes.model import (
    COMPONENTS, Site, SiteError, arch_table, hosted_model, model_identity, n_layers, resolve_model, router_layers,
)  # fmt: skip
from probes.model.sites import FROM_EMBEDDINGS
from steer.apply import steer as steering
from steer.convert import zero_neurons
from steer.incline import fit_incline_maps
from steer.evaluate import next_token_loss
from xlalign.choices import DEFAULT_K, FIND_METHODS
from xlalign.errors import JobError
from xlalign.loop_options import corpus_language
from xlalign.presets import takes_preset
from xlalign.resume import ResumableTable



def open_corpus(
    corpus: ParallelCorpus | str | os.PathLike,
    *,
    langs: Sequence[str] | None = None,
    max_sentences: int | None = None,
    rows: tuple[int, int] | None = None,
) -> ParallelCorpus:
    """A corpus spec (or object), restricted to ``langs``, the first ``max_sentences`` and then ``rows``."""
    parallel = corpus if isinstance(corpus, ParallelCorpus) else load_corpus(corpus)
    parallel = parallel.subset(langs, max_sentences)
    return parallel if rows is None else parallel.rows(*rows)


def open_model(
    model, tokenizer=None, *, device: str = "cpu", device_map: str | None = None, dtype: str = "float32",
    backend: str = "hf",
):
    """``(model, tokenizer)`` from a spec (loaded on ``device`` in ``dtype``) or an object (used as it is), run
    through ``backend`` (see :func:`probes.model.resolve_model`)."""
    return resolve_model(model, tokenizer, device=device, device_map=device_map, dtype=dtype, backend=backend)


def refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise JobError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")


@contextmanager
def job_bar(progress: bool, what: str) -> Iterator[tqdm]:
    """One overall progress bar for a job (hidden when ``progress`` is False and on every rank but the main one
    of a torchrun job); phases name themselves on it."""
    shown = progress and ranks().is_main
    with tqdm(total=0, desc=what, unit="step", disable=not shown, dynamic_ncols=True) as bar:
        yield bar


def parse_sites(spec: str, model, layers: Sequence[int] | None = None) -> list[Site]:
    """``'resid,mlp_act'`` -> those components at every layer (``resid`` and ``hidden`` from 0, ``router`` where
    the model has one); ``'resid.7'`` -> one site."""
    sites = []
    for item in (part.strip() for part in spec.split(",") if part.strip()):
        if "." in item:
            sites.append(Site.parse(item))
        elif item in COMPONENTS:
            first = 0 if item in FROM_EMBEDDINGS else 1
            every = router_layers(model) if item == "router" else range(first, n_layers(model) + 1)
            sites += [Site(layer, item) for layer in every if layers is None or layer in layers]
        else:
            raise SiteError(f"--sites: unknown component {item!r}; choose from {', '.join(COMPONENTS)} or COMPONENT.LAYER")
    if not sites:
        routerless = "router" in spec and not router_layers(model)
        why = "this model has no MoE router (it is dense)" if routerless else "it names no site this model has"
        given = f" with --layers {','.join(map(str, layers))}" if layers is not None else ""
        raise SiteError(f"--sites {spec!r}{given} selects no site: {why}")
    return sites


@takes_preset("capture")
def capture(
    out: str | os.PathLike,
    *,
    model="default",
    tokenizer=None,
    corpus: ParallelCorpus | str = "demo",
    sites: str | Sequence[Site] = "hidden",
    layers: Sequence[int] | None = None,
    pooling: str | None = None,
    shard_size: int = 256,
    tokenization: Tokenization = Tokenization(),
    device: str = "cpu",
    device_map: str | None = None,
    dtype: str = "float32",
    backend: str = "hf",
    remote: bool | str = False,
    progress: bool = True,
) -> ActivationStore:
    """Capture pooled ``sites`` of every language of ``corpus`` into the (resumable) store at ``out``.

    The defaults are MEXA's (cisnlp/Mexa): ``hidden`` sites (the model's ``output_hidden_states``, the last
    after the final norm) pooled ``weighted``; ``pooling`` defaults to ``mean`` when ``router`` sites are
    captured (routing metrics average over tokens, as Bandarkar et al.'s code does). ``remote=True`` (with
    ``backend="nnsight"``) runs every shard on NDIF: ``model`` is then a hub id NDIF hosts (its weights are not
    downloaded) or an nnsight model; ``"local"`` is nnsight's offline simulation of it.
    """
    parallel = open_corpus(corpus)
    if remote and backend != "nnsight":
        raise JobError(f"remote capture runs through nnsight: pass backend='nnsight' (got {backend!r})")
    require_key(remote)
    if remote is True and isinstance(model, str):
        network, tokenizer = hosted_model(model)
    else:
        network, tokenizer = open_model(model, tokenizer, device=device, device_map=device_map, dtype=dtype,
                                         backend=backend)
    chosen = parse_sites(sites, network, layers) if isinstance(sites, str) else list(sites)
    if pooling is None:
        pooling = "mean" if any(site.component == "router" for site in chosen) else "weighted"
    with job_bar(progress, f"capture into {out}") as bar:
        return capture_to_store(network, tokenizer, parallel, chosen, out, pooling=pooling, shard_size=shard_size,
                                tokenization=tokenization, remote=remote or None, progress=bar)  # fmt: skip


@takes_preset("measure")
def measure(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    pivot: str = "eng",
    metrics: str | Sequence[str] = ("retrieval_top1", "mexa"),
    component: str | None = None,
    importance: str = "weight",
    ci: bool = False,
    n_boot: int = 1000,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Alignment (or, for ``component='router'``, routing metrics of the expert ``importance``: see
    :func:`probes.analysis.measure_routing`) of a store, written as a CSV to ``out``. ``component`` defaults to
    the store's only component, else to ``hidden`` (``resid`` in a store without ``hidden`` sites)."""
    out = Path(out)
    refuse_overwrite(out, overwrite)
    pivot = normalize_language(pivot)
    activations = ActivationStore(store)
    if component is None:
        held = {site.component for site in activations.sites}
        component = held.pop() if len(held) == 1 else None
    if component == "router":
        table = measure_routing(activations, pivot, importance=importance, ci=ci, n_boot=n_boot)
    else:
        table = measure_activations(activations, pivot=pivot, metrics=metrics, component=component, ci=ci,
                                    n_boot=n_boot)  # fmt: skip
    write_text(out, table.to_csv(index=False))
    return table


def check(store: str | os.PathLike) -> dict[Path, str]:
    """Every damaged or missing shard of a store with what is wrong with it (empty: the store is good)."""
    return ActivationStore(store).check()


@takes_preset("find")
def find(
    kind: str,
    out: str | os.PathLike,
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
    device: str = "cpu",
    device_map: str | None = None,
    dtype: str = "float32",
    backend: str = "hf",
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Find language-specific ``neurons`` (one file: ``out``), ``shift`` vectors or ``map``s (one file per
    non-pivot language in the directory ``out``). Returns the files written.

    AP experts: the ``k`` units of highest and ``bottom_k`` of lowest AP per language among the units of
    ``components`` (default ``mlp_act``), ranked together, over sentences pooled with ``pooling`` (``mean`` as
    Kojima et al., ``max`` as Suau et al.); several components give one file per component in the directory
    ``out`` (``ap.<component>.safetensors``)."""
    if kind not in FIND_METHODS:
        raise JobError(f"find: unknown kind {kind!r}; choose from {', '.join(FIND_METHODS)}")
    method = method or FIND_METHODS[kind][0]
    if method not in FIND_METHODS[kind]:
        raise JobError(f"find {kind}: method {method!r}; choose from {', '.join(FIND_METHODS[kind])}")
    if (components or bottom_k or pooling != "mean") and method != "ap":
        raise JobError(f"find {kind} --method {method}: components, bottom_k and pooling are options of AP experts")
    parallel = open_corpus(corpus)
    out = Path(out)
    pivot = corpus_language(pivot, parallel, "pivot") if kind != "neurons" else normalize_language(pivot)
    languages = [lang for lang in parallel.languages if lang != pivot]
    network, tokenizer = open_model(model, tokenizer, device=device, device_map=device_map, dtype=dtype,
                                     backend=backend)
    linear = list(arch_table(network).linear)  # "linear": every linear projection the family has, as Kojima et al.
    named = components or ["mlp_act"]
    units = list(dict.fromkeys(c for name in named for c in (linear if name == "linear" else [name])))
    if kind != "neurons":
        targets = [out / f"{kind}.{lang}.safetensors" for lang in languages]
    else:
        targets = [out] if len(units) == 1 else [out / f"ap.{component}.safetensors" for component in units]
    for path in targets:
        refuse_overwrite(path, overwrite)
    group = ranks()
    if group.world > 1 and (kind, method) != ("neurons", "lape"):
        raise JobError(f"find {kind} --method {method} is not split across processes: run it as one process "
                       "(only `find neurons --method lape`, `capture` and `run` split their work under torchrun)")
    layers = range(1, n_layers(network) + 1)
    with job_bar(progress, f"find {kind} ({method}) into {out}") as bar:
        if kind == "neurons" and method == "lape":
            sites = [Site(layer, "mlp_gate") for layer in layers]
            stats = collect_stats(network, tokenizer, parallel, sites, bins=0, tokenization=tokenization, progress=bar)
            neurons = LAPE().fit(stats).neurons_  # every rank has all languages' counts
            group.on_main(lambda: neurons.save(out, overwrite=overwrite))
            return [out]
        if kind == "neurons":
            sites = [Site(layer, component) for component in units for layer in layers]
            acts = capture_corpus(network, tokenizer, parallel, sites, pooling=pooling, tokenization=tokenization,
                                  progress=bar)  # fmt: skip
            experts = APExperts(k=DEFAULT_K["ap"] if k is None else k, bottom_k=bottom_k, pooling=pooling)
            found = experts.fit(acts, units).neuron_sets_
            return save_all([found[component] for component in units], targets, overwrite)
        if method == "incline":  # its own (half code-switched) training pairs
            maps = fit_incline_maps(network, tokenizer, parallel, languages, pivot=pivot, tokenization=tokenization,
                                    progress=bar)  # fmt: skip
            return save_all([maps[lang] for lang in languages], targets, overwrite)
        component = "head" if method == "claim" else "resid"  # as their papers
        sites = [Site(layer, component) for layer in layers]
        acts = capture_corpus(network, tokenizer, parallel, sites, tokenization=tokenization, progress=bar)
        if method == "claim":
            found = [HeadProbe().fit(acts, lang, pivot=pivot).shift_vector(k or DEFAULT_K["claim"]) for lang in languages]
        else:
            fit = fit_shift if kind == "shift" else fit_map
            found = [fit(acts, lang, pivot=pivot, method=method) for lang in languages]
        return save_all(found, targets, overwrite)


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


def ablate(
    neurons: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model="default",
    tokenizer=None,
    corpus: ParallelCorpus | str = "demo",
    tokenization: Tokenization = Tokenization(),
    device: str = "cpu",
    device_map: str | None = None,
    dtype: str = "float32",
    backend: str = "hf",
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Zero each language's neurons in turn and measure every language's next-token loss.

    Each finished language is written to the CSV ``out`` at once (:class:`xlalign.resume.ResumableTable`), so an
    interrupted run keeps what it finished, and the same command resumes it.
    """
    out = Path(out)
    parallel = open_corpus(corpus)
    network, tokenizer = open_model(model, tokenizer, device=device, device_map=device_map, dtype=dtype,
                                     backend=backend)
    found = NeuronSet.load(neurons, model=network)
    zeroed = [lang for lang in found.languages if lang in parallel.languages]
    if not zeroed:
        raise JobError(f"{neurons} has neurons for {', '.join(found.languages)}, none of them in the corpus")
    settings = {"neurons_sha256": hashlib.sha256(Path(neurons).read_bytes()).hexdigest(),
                "model": model_identity(network)["weights_sha256"], "corpus": parallel.fingerprint(),
                "tokenization": tokenization.as_dict()}  # fmt: skip
    table = ResumableTable(out, settings)
    state = table.interrupted() if out.exists() and not overwrite else None
    if out.exists() and not overwrite and state is None:
        if table.made_by_another_job():
            raise JobError(f"{out} is a partial ablation of other neurons, model, corpus or tokenisation; pass "
                           "--overwrite to start again, or repeat the original command to resume it")  # fmt: skip
        raise JobError(f"{out} exists (a finished ablation or someone else's file); pass --overwrite to replace it")
    rows = state["rows"].values.tolist() if state else []
    done = {row[0] for row in rows}

    def losses(phase: str, bar) -> dict[str, float]:
        result = {}
        for lang in parallel.languages:
            bar.set_description(f"ablate: {phase}, loss on {lang}")
            result[lang] = next_token_loss(network, tokenizer, parallel.texts(lang), tokenization=tokenization)
            bar.update(1)
        return result

    todo = [lang for lang in zeroed if lang not in done]
    with job_bar(progress, f"ablate into {out}") as bar:
        add_steps(bar, len(parallel.languages) * (len(todo) + (state is None)))
        before = state["before"] if state else losses("unablated", bar)
        for lang in todo:
            with steering(network, [zero_neurons(found, lang)]):
                after = losses(f"{lang} neurons zeroed", bar)
            rows += [[lang, evaluated, before[evaluated], after[evaluated]] for evaluated in parallel.languages]
            table.save(_ablation_table(rows), before=before)
    result = _ablation_table(rows)
    table.finish(result)
    return result


def _ablation_table(rows: list) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["zeroed", "evaluated", "loss_before", "loss_after"])
