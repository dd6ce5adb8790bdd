"""The jobs behind the command line: capture, measure, ablate (``find``: :mod:`xlalign.finding`; ``steer``:
:mod:`xlalign.steering`; ``run`` and ``evaluate``: :mod:`xlalign.closed_loop`). Each takes a model spec or a model
object the user holds (with its tokenizer), a corpus spec or a :class:`~probes.data.ParallelCorpus`, and checks
every input before it writes anything.
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
from probes.capture import ActivationStore, Tokenization, capture_to_store
from probes.capture.distributed import ranks
from probes.capture.progress import add_steps
from probes.capture.remote import require_key
from probes.data import ParallelCorpus, load_corpus, normalize_language
from probes.data.files import write_text
from probes.model import COMPONENTS, Loading, Site, SiteError, hosted_model, model_identity, n_layers, router_layers
from probes.model.sites import FROM_EMBEDDINGS
from steer.apply import steer as steering
from steer.convert import zero_neurons
from steer.evaluate import next_token_loss
from xlalign.errors import JobError
from xlalign.loading import takes_loading
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


def open_model(model, tokenizer=None, loading: Loading = Loading()):
    """``(model, tokenizer)`` from a spec (loaded as ``loading`` says) or an object (used as it is), run through
    its backend (see :func:`probes.model.resolve_model`)."""
    return loading.resolve(model, tokenizer)


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
            raise SiteError(
                f"--sites: unknown component {item!r}; choose from {', '.join(COMPONENTS)} or COMPONENT.LAYER"
            )
    if not sites:
        routerless = "router" in spec and not router_layers(model)
        why = "this model has no MoE router (it is dense)" if routerless else "it names no site this model has"
        given = f" with --layers {','.join(map(str, layers))}" if layers is not None else ""
        raise SiteError(f"--sites {spec!r}{given} selects no site: {why}")
    return sites


@takes_preset("capture")
@takes_loading
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
    loading: Loading = Loading(),
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
    if remote and loading.backend != "nnsight":
        raise JobError(f"remote capture runs through nnsight: pass backend='nnsight' (got {loading.backend!r})")
    require_key(remote)
    if remote is True and isinstance(model, str):
        network, tokenizer = hosted_model(model)
    else:
        network, tokenizer = open_model(model, tokenizer, loading)
    chosen = parse_sites(sites, network, layers) if isinstance(sites, str) else list(sites)
    if pooling is None:
        pooling = "mean" if any(site.component == "router" for site in chosen) else "weighted"
    with job_bar(progress, f"capture into {out}") as bar:
        return capture_to_store(
            network,
            tokenizer,
            parallel,
            chosen,
            out,
            pooling=pooling,
            shard_size=shard_size,
            tokenization=tokenization,
            remote=remote or None,
            progress=bar,
        )


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
        table = measure_activations(
            activations, pivot=pivot, metrics=metrics, component=component, ci=ci, n_boot=n_boot
        )
    write_text(out, table.to_csv(index=False))
    return table


def check(store: str | os.PathLike) -> dict[Path, str]:
    """Every damaged or missing shard of a store with what is wrong with it (empty: the store is good)."""
    return ActivationStore(store).check()


@takes_loading
def ablate(
    neurons: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model="default",
    tokenizer=None,
    corpus: ParallelCorpus | str = "demo",
    tokenization: Tokenization = Tokenization(),
    loading: Loading = Loading(),
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Zero each language's neurons in turn and measure every language's next-token loss.

    Each finished language is written to the CSV ``out`` at once (:class:`xlalign.resume.ResumableTable`), so an
    interrupted run keeps what it finished, and the same command resumes it.
    """
    out = Path(out)
    parallel = open_corpus(corpus)
    network, tokenizer = open_model(model, tokenizer, loading)
    found = NeuronSet.load(neurons, model=network)
    zeroed = [lang for lang in found.languages if lang in parallel.languages]
    if not zeroed:
        raise JobError(f"{neurons} has neurons for {', '.join(found.languages)}, none of them in the corpus")
    settings = {
        "neurons_sha256": hashlib.sha256(Path(neurons).read_bytes()).hexdigest(),
        "model": model_identity(network)["weights_sha256"],
        "corpus": parallel.fingerprint(),
        "tokenization": tokenization.as_dict(),
    }
    table = ResumableTable(out, settings)
    state = table.interrupted() if out.exists() and not overwrite else None
    if out.exists() and not overwrite and state is None:
        if table.made_by_another_job():
            raise JobError(
                f"{out} is a partial ablation of other neurons, model, corpus or tokenisation; pass "
                "--overwrite to start again, or repeat the original command to resume it"
            )
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
