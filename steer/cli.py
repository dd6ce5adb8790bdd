"""The ``xlalign`` command: capture, measure, run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from probes.capture import POOLINGS
from probes.sites import COMPONENTS


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_sites(spec: str, n_layers: int, layers: Sequence[int] | None = None) -> list:
    """``'resid,mlp_act'`` -> those components at every layer (``resid`` from 0); ``'resid.7'`` -> one site."""
    from probes.sites import Site, SiteError

    sites = []
    for item in _csv(spec):
        if "." in item:
            sites.append(Site.parse(item))
        elif item in COMPONENTS:
            first = 0 if item == "resid" else 1
            sites += [Site(layer, item) for layer in range(first, n_layers + 1) if layers is None or layer in layers]
        else:
            raise SiteError(f"--sites: unknown component {item!r}; choose from {', '.join(COMPONENTS)} or COMPONENT.LAYER")
    return sites


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlalign", description="Measure and raise cross-lingual alignment in LMs.")
    commands = parser.add_subparsers(dest="command", required=True)

    def corpus_options(command):
        command.add_argument("--corpus", default="demo", help="demo, an NTREX or FLORES directory, a .tsv or .jsonl file")
        command.add_argument("--langs", type=_csv, help="comma-separated language codes (default: all)")
        command.add_argument("--max-sentences", type=int, help="use the first N sentences")
        command.add_argument("--batch-size", type=int, default=16)
        command.add_argument("--pooling", choices=POOLINGS, default="mean")
        command.add_argument("--no-progress", action="store_true", help="hide progress bars")

    capture = commands.add_parser("capture", help="capture pooled activations into a store")
    capture.add_argument("--model", default="default", help="default, random:FAMILY, a .gguf file, a directory or a hub id")
    corpus_options(capture)
    capture.add_argument("--sites", default="resid", help="components (resid,mlp_act,...) or sites (resid.7)")
    capture.add_argument("--layers", type=lambda s: [int(x) for x in _csv(s)], help="restrict components to these layers")
    capture.add_argument("--out", required=True, type=Path, help="store directory (resumed if it exists)")

    measure = commands.add_parser("measure", help="alignment metrics per layer and language from a store")
    measure.add_argument("store", type=Path)
    measure.add_argument("--pivot", default="eng")
    measure.add_argument("--metrics", type=_csv, default=["retrieval_top1", "mexa"])
    measure.add_argument("--component", default="resid", choices=COMPONENTS)
    measure.add_argument("--out", required=True, type=Path, help="CSV file: layer,language,metric,value")
    measure.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    run = commands.add_parser("run", help="the main job: capture, measure, figures and report.md")
    run.add_argument("--model", default="default")
    corpus_options(run)
    run.add_argument("--pivot", default="eng")
    run.add_argument("--out", required=True, type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"capture": _capture, "measure": _measure, "run": _run}[args.command](args)
    except (ValueError, FileExistsError) as error:  # every xlalign input error is a ValueError subclass
        print(f"xlalign {args.command}: error: {error}", file=sys.stderr)
        return 2


def _capture(args) -> int:
    from probes.corpus import load_corpus
    from probes.models import load_model
    from probes.sites import n_layers
    from probes.store import capture_to_store

    corpus = load_corpus(args.corpus, langs=args.langs, max_sentences=args.max_sentences)
    model, tokenizer = load_model(args.model)
    sites = parse_sites(args.sites, n_layers(model), args.layers)
    store = capture_to_store(model, tokenizer, corpus, sites, args.out, pooling=args.pooling,
                             batch_size=args.batch_size, progress=not args.no_progress)
    print(f"{store.path}: {len(sites)} sites x {len(store.languages)} languages x {len(corpus)} sentences")
    return 0


def _measure(args) -> int:
    from probes.atomic import write_text
    from probes.metrics import measure_store
    from probes.store import ActivationStore

    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    table = measure_store(ActivationStore(args.store), pivot=args.pivot, metrics=args.metrics, component=args.component)
    write_text(args.out, table.to_csv(index=False))
    print(f"{args.out}: {len(table)} rows")
    return 0


def _run(args) -> int:
    from steer.pipeline import run

    report = run(args.out, model=args.model, corpus=args.corpus, langs=args.langs, max_sentences=args.max_sentences,
                 pivot=args.pivot, pooling=args.pooling, batch_size=args.batch_size, progress=not args.no_progress)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
