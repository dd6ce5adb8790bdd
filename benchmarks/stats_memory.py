"""Streaming neuron statistics keep flat memory as the corpus grows.

Collects per-token ``mlp_gate`` statistics of every layer of a tiny random model over 1x, 4x and 16x as
many sentences, each in a fresh process, and reports the size of the accumulated state and the process's
peak resident memory. Ends with ``RATIO stats_state_16x_vs_1x <value>`` (1.0 = flat) and
``RATIO stats_peak_rss_16x_vs_1x <value>``.
"""

from __future__ import annotations

import resource

from benchmarks.timing import in_fresh_processes, measured_once

SIZES = (40, 160, 640)


def measure(n_sentences: int) -> dict:
    from probes.capture import collect_stats
    from probes.data import ParallelCorpus, demo_corpus
    from probes.model import Site, n_layers, random_model

    model, tokenizer = random_model("llama")
    base = demo_corpus().subset(["eng", "deu", "rus", "jpn"])
    repeats = -(-n_sentences // len(base))
    texts = {lang: (base.texts(lang) * repeats)[:n_sentences] for lang in base.languages}
    corpus = ParallelCorpus([str(i) for i in range(n_sentences)], texts)
    sites = [Site(layer, "mlp_gate") for layer in range(1, n_layers(model) + 1)]
    stats = collect_stats(model, tokenizer, corpus, sites)
    state = sum(t.numel() * t.element_size() for t in stats.state_dict().values())
    tokens = sum(stats.count(sites[0], lang) for lang in corpus.languages)
    return {
        "sentences": n_sentences,
        "tokens": tokens,
        "state_bytes": state,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    if measured_once(measure):
        return
    rows = in_fresh_processes("benchmarks.stats_memory", SIZES)
    print(f"{'sentences':>10}{'tokens':>10}{'state MB':>10}{'peak RSS MB':>13}")
    for row in rows:
        print(
            f"{row['sentences']:>10}{row['tokens']:>10}{row['state_bytes'] / 2**20:>10.2f}{row['peak_rss_mb']:>13.0f}"
        )
    print(f"\nRATIO stats_state_16x_vs_1x {rows[-1]['state_bytes'] / rows[0]['state_bytes']:.3f}")
    print(f"RATIO stats_peak_rss_16x_vs_1x {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    main()
