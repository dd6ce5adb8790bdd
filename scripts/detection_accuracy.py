"""How well the model itself tells the languages apart at its early layers: the language detector
``xlalign evaluate --gate-by-detection`` gates on, fitted on the training split, scored on held-out sentences.

    PYTHONPATH=. python scripts/detection_accuracy.py --model default --corpus path/to/ntrex \\
        --langs eng,deu,fra,rus,zho-CN,arb,hin --max-sentences 300 --below 11

Prints, per candidate layer, the cross-validated accuracy on the training split, then the detector
:func:`probes.find.earliest_detector` picks (the first layer reaching 95%) with its held-out accuracy per
language and every misdetected sentence (what a misdetection costs: that sentence gets the detected
language's plan, or none if detected as the pivot).
"""

from __future__ import annotations

import argparse
from collections import Counter

from probes.analysis import Activations
from probes.analysis.langid import language_id_scores
from probes.capture import capture
from probes.data import load_corpus
from probes.find import earliest_detector
from probes.model import Site, model_identity
from xlalign.jobs import open_model


def pooled(model, tokenizer, corpus, sites) -> Activations:
    data = {}
    for lang in corpus.languages:
        for site, values in capture(model, tokenizer, corpus.texts(lang), sites).items():
            data[site, lang] = values
    return Activations(data, model=model_identity(model), pooling="mean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--langs", required=True)
    parser.add_argument("--max-sentences", type=int, default=300)
    parser.add_argument("--below", type=int, required=True, help="candidate layers are 1 .. below-1 (the peak)")
    args = parser.parse_args()
    model, tokenizer = open_model(args.model)
    corpus = load_corpus(args.corpus, langs=args.langs.split(","), max_sentences=args.max_sentences)
    train, test = corpus.split(test_fraction=0.2)
    sites = [Site(layer, "resid") for layer in range(1, args.below)]
    fit, held_out = pooled(model, tokenizer, train, sites), pooled(model, tokenizer, test, sites)
    print("| layer | cross-validated accuracy (training split) |\n|---|---|")
    for layer, by_language in fit.by_layer("resid"):
        print(f"| {layer} | {language_id_scores(by_language)[0]:.3f} |")
    detector = earliest_detector(fit, [site.layer for site in sites])
    print(f"\ndetector at layer {detector.layer} (cross-validated {detector.params['cv_accuracy']:.3f}); held out:")
    print("\n| language | sentences | detected correctly | detected as |\n|---|---|---|---|")
    for lang in test.languages:
        found = detector.predict(held_out.get(Site(detector.layer, "resid"), lang))
        wrong = Counter(f for f in found if f != lang)
        print(
            f"| {lang} | {len(found)} | {sum(f == lang for f in found) / len(found):.3f} | "
            f"{', '.join(f'{k} {v}' for k, v in wrong.items()) or '-'} |"
        )


if __name__ == "__main__":
    main()
