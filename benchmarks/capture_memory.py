"""A store capture keeps flat memory as the corpus grows: shards go to disk as they finish.

Captures pooled ``resid`` and ``hidden`` sites of every layer of a tiny random model for 20 NTREX languages, at
250 and at 1,000 sentences each (5,000 and 20,000 texts), each run in a fresh process into a fresh store, and
reports the process's peak resident memory. Texts are cut at 128 tokens: the largest batch sets a part of the
peak (attention scores grow with its length squared), and the cut gives both sizes the same largest batch, so
what is compared is memory against the number of texts. Ends with ``RATIO capture_peak_rss_4x_vs_1x <value>`` (target
<= 1.05: 1.0 is flat).
"""

from __future__ import annotations

import resource
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks.timing import in_fresh_processes, measured_once

NTREX = Path(__file__).resolve().parents[2] / "shared" / "data" / "ntrex"
LANGUAGES = (
    "eng",
    "amh",
    "arb",
    "ces",
    "deu",
    "ell",
    "fas",
    "fin",
    "fra",
    "heb",
    "hin",
    "ind",
    "ita",
    "jpn",
    "kaz",
    "kor",
    "nld",
    "por",
    "rus",
    "spa",
)
SIZES = (250, 1000)


def measure(n_sentences: int) -> dict:
    from probes.capture import Tokenization, capture_to_store
    from probes.data import load_corpus
    from probes.model import Site, n_layers, random_model

    model, tokenizer = random_model("llama")
    corpus = load_corpus(NTREX, langs=list(LANGUAGES), max_sentences=n_sentences)
    layers = n_layers(model)
    sites = [Site(layer, component) for component in ("resid", "hidden") for layer in range(layers + 1)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        with warnings.catch_warnings():  # "N texts are longer than max_length": the cut is intended
            warnings.simplefilter("ignore", UserWarning)
            store = capture_to_store(
                model,
                tokenizer,
                corpus,
                sites,
                Path(folder) / "store",
                pooling="weighted",
                tokenization=Tokenization(max_length=128),
            )
        texts = len(store) * len(store.languages)
    return {
        "sentences": n_sentences,
        "texts": texts,
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    if measured_once(measure):
        return
    rows = in_fresh_processes("benchmarks.capture_memory", SIZES)
    print(f"{'sentences':>10}{'texts':>10}{'seconds':>10}{'peak RSS MB':>13}")
    for row in rows:
        print(f"{row['sentences']:>10}{row['texts']:>10}{row['seconds']:>10.1f}{row['peak_rss_mb']:>13.0f}")
    print(f"\nRATIO capture_peak_rss_4x_vs_1x {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    main()
