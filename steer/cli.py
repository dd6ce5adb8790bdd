"""The ``xlalign`` command: capture, measure, find, ablate, steer, evaluate, run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from probes.capture import POOLINGS
from probes.sites import COMPONENTS

FIND_KINDS = ("neurons", "shift", "map")


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _span(text: str) -> tuple[int, int]:
    start, _, stop = text.partition(":")
    if not (start.isdigit() and stop.isdigit()) or int(start) >= int(stop):
        raise argparse.ArgumentTypeError(f"expected START:STOP with START < STOP, got {text!r}")
    return int(start), int(stop)


def parse_sites(spec: str, model, layers: Sequence[int] | None = None) -> list:
    """``'resid,mlp_act'`` -> those components at every layer (``resid`` from 0, ``router`` where the model has
    one); ``'resid.7'`` -> one site."""
    from probes.sites import Site, SiteError, n_layers, router_layers

    sites = []
    for item in _csv(spec):
        if "." in item:
            sites.append(Site.parse(item))
        elif item in COMPONENTS:
            every = router_layers(model) if item == "router" else range(0 if item == "resid" else 1, n_layers(model) + 1)
            sites += [Site(layer, item) for layer in every if layers is None or layer in layers]
        else:
            raise SiteError(f"--sites: unknown component {item!r}; choose from {', '.join(COMPONENTS)} or COMPONENT.LAYER")
    return sites


def build_parser() -> argparse.ArgumentParser:
    from steer.methods import METHODS

    parser = argparse.ArgumentParser(prog="xlalign", description="Measure and raise cross-lingual alignment in LMs.")
    commands = parser.add_subparsers(dest="command", required=True)

    def model_and_corpus(command, pooling: bool = True):
        command.add_argument("--model", default="default", help="default, random:FAMILY, a .gguf file, a directory or a hub id")
        command.add_argument("--corpus", default="demo", help="demo, an NTREX or FLORES directory, a .tsv or .jsonl file")
        command.add_argument("--langs", type=_csv, help="comma-separated language codes (default: all)")
        command.add_argument("--max-sentences", type=int, help="use the first N sentences")
        command.add_argument("--sentences", type=_span, help="use sentences START:STOP (e.g. held-out rows)")
        command.add_argument("--batch-size", type=int, default=16)
        command.add_argument("--no-progress", action="store_true", help="hide progress bars")
        if pooling:
            command.add_argument("--pooling", choices=POOLINGS, default="mean")

    capture = commands.add_parser("capture", help="capture pooled activations into a store")
    model_and_corpus(capture)
    capture.add_argument("--sites", default="resid", help="components (resid,mlp_act,...) or sites (resid.7)")
    capture.add_argument("--layers", type=lambda s: [int(x) for x in _csv(s)], help="restrict components to these layers")
    capture.add_argument("--out", required=True, type=Path, help="store directory (resumed if it exists)")

    measure = commands.add_parser("measure", help="alignment metrics per layer and language from a store")
    measure.add_argument("store", type=Path)
    measure.add_argument("--pivot", default="eng")
    measure.add_argument("--metrics", type=_csv, default=["retrieval_top1", "mexa"], help="names, or 'all'")
    measure.add_argument("--component", default="resid", choices=COMPONENTS,
                         help="router: routing divergence (jsd, jsd_norm) and top-k expert overlap")
    measure.add_argument("--ci", action="store_true", help="add 95%% bootstrap intervals (ci_low, ci_high)")
    measure.add_argument("--n-boot", type=int, default=1000)
    measure.add_argument("--out", required=True, type=Path, help="CSV file: layer,language,metric,value")
    measure.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    find = commands.add_parser("find", help="find language-specific neurons, shift vectors or linear maps")
    find.add_argument("kind", choices=FIND_KINDS)
    model_and_corpus(find, pooling=False)
    find.add_argument("--method", help="neurons: lape|ap; shift: mean|pca|logistic|claim; map: incline|procrustes")
    find.add_argument("--pivot", default="eng")
    find.add_argument("--k", type=int, default=1000, help="ap: units per language; claim: heads")
    find.add_argument("--out", required=True, type=Path, help="neurons: a .safetensors file; shift/map: a directory")
    find.add_argument("--overwrite", action="store_true")

    ablate = commands.add_parser("ablate", help="zero each language's neurons in turn; next-token loss per language")
    ablate.add_argument("neurons", type=Path)
    model_and_corpus(ablate, pooling=False)
    ablate.add_argument("--out", required=True, type=Path, help="CSV: zeroed,evaluated,loss_before,loss_after")
    ablate.add_argument("--overwrite", action="store_true")

    steer = commands.add_parser("steer", help="generate with an artifact applied (off vs on)")
    steer.add_argument("--artifact", required=True, type=Path)
    steer.add_argument("--model", default="default")
    steer.add_argument("--prompt", required=True, action="append", help="repeat for several prompts")
    steer.add_argument("--language", help="NeuronSet: whose neurons (LAPE) or experts (AP) to use")
    steer.add_argument("--strength", type=float, default=1.0, help="alpha (shift) or sigma (map)")
    steer.add_argument("--max-new-tokens", type=int, default=30)

    for name, text in (("evaluate", "closed loop: fit on train, steer and evaluate on held-out"),
                       ("run", "the main job: measure, find, steer, evaluate, report.md")):  # fmt: skip
        command = commands.add_parser(name, help=text)
        model_and_corpus(command, pooling=name == "run")
        command.add_argument("--pivot", default="eng")
        command.add_argument("--methods", type=_csv, help=f"subset of {','.join(METHODS)} (default: all that apply)")
        command.add_argument("--test-fraction", type=float, default=0.2)
        command.add_argument("--loss-sentences", type=int, default=32, help="held-out texts per language for the loss")
        command.add_argument("--prompts", type=int, default=8, help="held-out prompts per language for fidelity")
        command.add_argument("--out", required=True, type=Path)
        if name == "run":
            command.add_argument("--steer-langs", type=_csv, help="languages to steer (default: the 3 least aligned)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"capture": _capture, "measure": _measure, "find": _find, "ablate": _ablate, "steer": _steer,
                "evaluate": _evaluate, "run": _run}  # fmt: skip
    try:
        return handlers[args.command](args)
    except (ValueError, FileExistsError) as error:  # every xlalign input error is a ValueError subclass
        print(f"xlalign {args.command}: error: {error}", file=sys.stderr)
        return 2


def _corpus(args):
    from probes.corpus import ParallelCorpus, load_corpus

    corpus = load_corpus(args.corpus, langs=args.langs, max_sentences=args.max_sentences)
    if args.sentences is None:
        return corpus
    start, stop = args.sentences
    if stop > len(corpus):
        raise ValueError(f"--sentences {start}:{stop}: the corpus has {len(corpus)} sentences")
    documents = corpus.documents[start:stop] if corpus.documents else None
    texts = {lang: corpus.texts(lang)[start:stop] for lang in corpus.languages}
    return ParallelCorpus(corpus.ids[start:stop], texts, documents, f"{corpus.name}[{start}:{stop}]")


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")


def _capture(args) -> int:
    from probes.models import load_model
    from probes.store import capture_to_store

    corpus = _corpus(args)
    model, tokenizer = load_model(args.model)
    sites = parse_sites(args.sites, model, args.layers)
    store = capture_to_store(model, tokenizer, corpus, sites, args.out, pooling=args.pooling,
                             batch_size=args.batch_size, progress=not args.no_progress)  # fmt: skip
    print(f"{store.path}: {len(sites)} sites x {len(store.languages)} languages x {len(corpus)} sentences")
    return 0


def _measure(args) -> int:
    from probes.atomic import write_text
    from probes.metrics import measure_store
    from probes.store import ActivationStore

    _refuse_overwrite(args.out, args.overwrite)
    store = ActivationStore(args.store)
    if args.component == "router":
        from probes.routing_metrics import measure_routing

        table = measure_routing(store, args.pivot, ci=args.ci, n_boot=args.n_boot)
    else:
        table = measure_store(store, pivot=args.pivot, metrics=args.metrics, component=args.component, ci=args.ci,
                              n_boot=args.n_boot)  # fmt: skip
    write_text(args.out, table.to_csv(index=False))
    print(f"{args.out}: {len(table)} rows")
    return 0


def _find(args) -> int:
    from probes.capture import capture_by_layer
    from probes.directions import HeadProbe, LinearMap, ShiftVector
    from probes.models import load_model, model_identity
    from probes.neurons import LAPE, APExperts
    from probes.sites import Site, n_layers

    methods = {"neurons": ("lape", "ap"), "shift": ("mean", "pca", "logistic", "claim"), "map": ("incline", "procrustes")}
    method = args.method or methods[args.kind][0]
    if method not in methods[args.kind]:
        raise ValueError(f"find {args.kind}: --method {method!r}; choose from {', '.join(methods[args.kind])}")
    corpus = _corpus(args)
    model, tokenizer = load_model(args.model)
    progress = not args.no_progress
    if args.kind == "neurons":
        _refuse_overwrite(args.out, args.overwrite)
        if method == "lape":
            finder = LAPE().fit_from_model(model, tokenizer, corpus, batch_size=args.batch_size, progress=progress)
        else:
            sites = [Site(layer, "mlp_act") for layer in range(1, n_layers(model) + 1)]
            finder = APExperts(k=args.k).fit_from_model(model, tokenizer, corpus, sites, batch_size=args.batch_size,
                                                        progress=progress)  # fmt: skip
        finder.neurons_.save(args.out, overwrite=args.overwrite)
        print(f"{args.out}: {finder.neurons_!r}")
        return 0
    languages = [lang for lang in corpus.languages if lang != args.pivot]
    targets = {lang: args.out / f"{args.kind}.{lang}.safetensors" for lang in languages}
    for path in targets.values():
        _refuse_overwrite(path, args.overwrite)
    component = "head" if method == "claim" else "resid"
    layers = range(1, n_layers(model) + 1)
    data = capture_by_layer(model, tokenizer, corpus, component, layers, corpus.languages,
                            batch_size=args.batch_size, progress=progress)  # fmt: skip
    for lang, path in targets.items():
        if method == "claim":
            artifact = HeadProbe().fit(data, lang, pivot=args.pivot).shift_vector(args.k, model=model)
        elif args.kind == "shift":
            artifact = ShiftVector.from_store(data, lang, pivot=args.pivot, method=method, model=model_identity(model))
        else:
            artifact = LinearMap.from_store(data, lang, pivot=args.pivot, method=method, model=model_identity(model))
        artifact.save(path, overwrite=args.overwrite)
        print(f"{path}: {args.kind} {method} {lang} -> {args.pivot}, layers {artifact.layers[0]}..{artifact.layers[-1]}")
    return 0


def _ablate(args) -> int:
    import pandas as pd

    from probes.atomic import write_text
    from probes.models import load_model
    from probes.neurons import NeuronSet
    from steer.apply import steer
    from steer.evaluate import next_token_loss
    from steer.interventions import ZeroNeurons

    _refuse_overwrite(args.out, args.overwrite)
    corpus = _corpus(args)
    model, tokenizer = load_model(args.model)
    neurons = NeuronSet.load(args.neurons, model=model)
    zeroed = [lang for lang in neurons.languages if lang in corpus.languages]
    if not zeroed:
        raise ValueError(f"{args.neurons} has neurons for {', '.join(neurons.languages)}, none of them in the corpus")

    def losses() -> dict[str, float]:
        return {lang: next_token_loss(model, tokenizer, corpus.texts(lang), progress=not args.no_progress)
                for lang in corpus.languages}  # fmt: skip

    before = losses()
    rows = []
    for lang in zeroed:
        with steer(model, [ZeroNeurons(neurons.units(lang), component=neurons.component)]):
            after = losses()
        rows += [(lang, evaluated, before[evaluated], after[evaluated]) for evaluated in corpus.languages]
        print(f"zeroed {lang}: " + " ".join(f"{e}:{after[e] - before[e]:+.3f}" for e in corpus.languages))
    table = pd.DataFrame(rows, columns=["zeroed", "evaluated", "loss_before", "loss_after"])
    write_text(args.out, table.to_csv(index=False))
    return 0


def _steer(args) -> int:
    from probes.artifacts import artifact_kind
    from probes.directions import LinearMap as FittedMap
    from probes.directions import ShiftVector
    from probes.models import load_model
    from probes.neurons import NeuronSet
    from steer.apply import steer
    from steer.evaluate import continuations
    from steer.interventions import AddVector, HeadShift, LinearMap, SetNeurons, ZeroNeurons

    model, tokenizer = load_model(args.model)
    kind = artifact_kind(args.artifact)
    if kind == "ShiftVector":
        shift = ShiftVector.load(args.artifact, model=model)
        plan = [HeadShift.from_shift(shift, args.strength) if shift.component == "head" else AddVector.from_shift(shift, args.strength)]
    elif kind == "LinearMap":
        plan = [LinearMap.from_map(FittedMap.load(args.artifact, model=model), sigma=args.strength)]
    elif kind == "NeuronSet":
        neurons = NeuronSet.load(args.artifact, model=model)
        if args.language not in neurons.languages:
            raise ValueError(f"--language: {args.artifact} has neurons for {', '.join(neurons.languages)}")
        if neurons.method == "LAPE":
            plan = [ZeroNeurons(neurons.units(args.language), component=neurons.component)]
        else:
            plan = [SetNeurons.from_neurons(neurons, args.language)]
    else:
        raise ValueError(f"{args.artifact} holds a {kind!r}, which xlalign steer cannot apply")
    off = continuations(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens)
    with steer(model, plan):
        on = continuations(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens)
    for prompt, before, after in zip(args.prompt, off, on):
        print(f"prompt: {prompt}\n  off: {before}\n  on:  {after}")
    return 0


def _evaluate(args) -> int:
    from steer.pipeline import evaluate_job

    report = evaluate_job(args.out, model=args.model, corpus=_corpus(args), pivot=args.pivot, methods=args.methods,
                          test_fraction=args.test_fraction, n_loss=args.loss_sentences, n_prompts=args.prompts,
                          batch_size=args.batch_size, progress=not args.no_progress)  # fmt: skip
    print(f"report: {report}")
    return 0


def _run(args) -> int:
    from steer.pipeline import run

    report = run(args.out, model=args.model, corpus=_corpus(args), pivot=args.pivot, pooling=args.pooling,
                 steer_langs=args.steer_langs, methods=args.methods, test_fraction=args.test_fraction,
                 n_loss=args.loss_sentences, n_prompts=args.prompts, batch_size=args.batch_size,
                 progress=not args.no_progress)  # fmt: skip
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
