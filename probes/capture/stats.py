"""Streaming per-neuron statistics by language (baukit ``runningstats`` style: ``add`` batches, then read).

:class:`NeuronStats` keeps, for every ``(site, language)`` and every neuron (the last dimension of the site's
tensor): the number of values seen, how many were ``> 0``, their sum and sum of squares (float64), the
exact minimum and maximum, and a fixed-size histogram for quantiles. Its memory is
``sites x neurons x languages x (bins + 6)`` numbers whatever the number of tokens or sentences::

    stats = collect_stats(model, tokenizer, corpus, [Site(l, "mlp_gate") for l in range(1, 19)])
    stats.probability(Site(3, "mlp_gate"), "deu")      # fraction of German tokens with activation > 0
    stats.quantile(Site(3, "mlp_gate"), "deu", 0.9)    # per-neuron 90th percentile (histogram estimate)

Values come either per non-pad token (``per="token"``: capture's ``on_tokens`` callback, pads and, with
``exclude_bos``, BOS never reach it) or per sentence (``per="sentence"``: pooled vectors).

Quantiles. Each neuron has its own histogram of ``bins`` equal bins. Its range starts as ``[min, max]`` of the
first batch; when a later value falls outside, the range doubles (towards that side) and pairs of
neighbouring bins merge, as often as needed, so no value is ever clipped. Growing up and then down can leave
up to three quarters of the range empty, no more: the bin width stays below four times ``(max - min) / bins``
(when the first batch has a spread; a constant first batch starts from a tiny range). :meth:`NeuronStats.quantile`
interpolates within the bin holding the order statistic, then clips to the exact ``[min, max]``: the estimate
lies within one bin width (:meth:`NeuronStats.bin_width`) of the exact order statistics around ``q * (n - 1)``,
i.e. between ``quantile(q, "lower") - width`` and ``quantile(q, "higher") + width``. Memory: an int32 count
per bin, so at most 2**31 values in one bin of one neuron.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.capture.bundle import takes_bundle
from probes.analysis.activations import NonFiniteError, non_finite
from probes.capture.distributed import ranks
from probes.capture.pooled import capture, naming
from probes.capture.pooling import check_pooling
from probes.capture.progress import Progress, progress_bar
from probes.capture.tokenization import Tokenization
from probes.data import ParallelCorpus
from probes.model.identity import model_identity
from probes.model.sites import Site
from probes.errors import XlalignError

PER = ("token", "sentence")


class StatsError(XlalignError):
    """Statistics asked for something that was never added, or fed values of the wrong shape."""


class NonFiniteStatsError(StatsError, NonFiniteError):
    """Statistics fed inf or NaN (both a :class:`StatsError` and a :class:`NonFiniteError`)."""


@dataclass
class _Running:
    """Accumulators of one (site, language): every tensor has the neurons as its first dimension."""

    count: int
    positive: Int[Tensor, " neurons"]
    total: Float[Tensor, " neurons"]
    squares: Float[Tensor, " neurons"]
    low: Float[Tensor, " neurons"]
    high: Float[Tensor, " neurons"]
    hist_start: Float[Tensor, " neurons"]  # left edge of bin 0
    hist_width: Float[Tensor, " neurons"]  # width of one bin
    hist: Int[Tensor, "neurons bins"]

    def tensors(self) -> dict[str, Tensor]:
        return {
            "positive": self.positive,
            "total": self.total,
            "squares": self.squares,
            "low": self.low,
            "high": self.high,
            "hist_start": self.hist_start,
            "hist_width": self.hist_width,
            "hist": self.hist,
        }


class NeuronStats:
    """Running per-neuron statistics for each (site, language). ``bins=0`` keeps no histogram (no quantiles).

    Feed it with :meth:`add` (or the callback :meth:`on_tokens` for :func:`probes.capture.pooled.capture`), then
    read :meth:`count`, :meth:`probability`, :meth:`mean`, :meth:`std`, :meth:`quantile`.
    """

    def __init__(self, bins: int = 128, *, per: str = "token") -> None:
        if bins < 0 or bins % 2:
            raise StatsError(f"bins must be an even number >= 0 (pairs of bins merge when the range grows), got {bins}")
        if per not in PER:
            raise StatsError(f"per must be one of {', '.join(PER)}, got {per!r}")
        self.bins = bins
        self.per = per
        self.model: dict | None = None  # identity of the model the values came from (set by collect_stats)
        self._state: dict[tuple[Site, str], _Running] = {}

    # ---- feeding ---------------------------------------------------------------------------------------

    def add(self, site: Site, language: str, values: Float[Tensor, "n neurons"]) -> None:
        """Add ``n`` observations (tokens or sentences) of every neuron at ``site`` for ``language``."""
        if values.dim() != 2:
            raise StatsError(
                f"{site} ({language}): expected values of shape (n, neurons), got {tuple(values.shape)}; "
                "flatten heads or other extra dimensions first"
            )
        if not values.shape[0]:
            return
        key = (site, language)
        state = self._state.get(key)
        # accumulate where the values are (no per-batch copies off the GPU); MPS has no float64: use the CPU
        device = state.total.device if state is not None else values.device
        device = torch.device("cpu") if device.type == "mps" else device
        dtype = values.dtype
        values = values.detach().to(device, torch.float64)
        if not torch.isfinite(values).all():
            bad = (~torch.isfinite(values)).any(dim=0).nonzero().flatten()[:5].tolist()
            where = f"NeuronStats.add (neurons {bad})"
            raise non_finite(site, language, dtype, where=where, kind=NonFiniteStatsError)
        if state is None:
            state = self._state[key] = self._start(values)
        elif state.positive.shape[0] != values.shape[1]:
            raise StatsError(
                f"{site} ({language}): got {values.shape[1]} neurons, earlier batches had {state.positive.shape[0]}"
            )
        state.count += values.shape[0]
        state.positive += (values > 0).sum(dim=0)
        state.total += values.sum(dim=0)
        state.squares += values.square().sum(dim=0)
        state.low = torch.minimum(state.low, values.amin(dim=0))
        state.high = torch.maximum(state.high, values.amax(dim=0))
        if self.bins:
            self._histogram(state, values)

    def on_tokens(self, language: str):
        """A callback for ``capture(..., on_tokens=...)`` adding every non-pad token's values to ``language``."""

        def callback(site: Site, values: Tensor, _rows: Tensor) -> None:
            self.add(site, language, values.reshape(values.shape[0], -1))

        return callback

    def _start(self, values: Tensor) -> _Running:
        neurons, device = values.shape[1], values.device
        low, high = values.amin(dim=0), values.amax(dim=0)
        # A degenerate first batch (one value, or a constant neuron) gets a tiny range that grows as needed.
        width = ((high - low) / max(self.bins, 1)).clamp(min=1e-9)
        width = torch.where(high > low, width, (low.abs() * 1e-6).clamp(min=1e-9))
        return _Running(
            count=0,
            positive=torch.zeros(neurons, dtype=torch.long, device=device),
            total=torch.zeros(neurons, dtype=torch.float64, device=device),
            squares=torch.zeros(neurons, dtype=torch.float64, device=device),
            low=low.clone(),
            high=high.clone(),
            hist_start=low.clone(),
            hist_width=width,
            hist=torch.zeros(neurons, self.bins, dtype=torch.int32, device=device),
        )

    def _histogram(self, state: _Running, values: Tensor) -> None:
        low, high = values.amin(dim=0), values.amax(dim=0)
        half = self.bins // 2
        for _ in range(4 * 1100):  # grow each neuron's range (by doubling) until the batch fits
            end = state.hist_start + state.hist_width * self.bins
            up, down = high > end, low < state.hist_start
            grow = up | down
            if not grow.any():
                break
            merged = state.hist[grow].view(-1, half, 2).sum(dim=2, dtype=torch.int32)
            zeros = torch.zeros_like(merged)
            towards_up = up[grow][:, None]  # when both sides overflow, grow up first, down on the next round
            state.hist[grow] = torch.where(towards_up, torch.cat([merged, zeros], 1), torch.cat([zeros, merged], 1))
            state.hist_start[grow & ~up] -= state.hist_width[grow & ~up] * self.bins
            state.hist_width[grow] *= 2
        else:  # float64 spans ~2100 doublings; reaching this means a bug, never a silent wrong histogram
            raise StatsError("histogram range failed to cover the values; please report this with the data")
        position = ((values - state.hist_start) / state.hist_width).floor().long().clamp(0, self.bins - 1)
        flat = position + torch.arange(values.shape[1], device=values.device) * self.bins
        counts = torch.bincount(flat.flatten(), minlength=values.shape[1] * self.bins)
        state.hist += counts.view(values.shape[1], self.bins).to(torch.int32)

    # ---- reading ---------------------------------------------------------------------------------------

    @property
    def sites(self) -> list[Site]:
        return sorted({site for site, _ in self._state})

    @property
    def languages(self) -> list[str]:
        return list(dict.fromkeys(language for _, language in self._state))

    def _get(self, site: Site, language: str) -> _Running:
        state = self._state.get((site, language))
        if state is None:
            raise StatsError(
                f"no statistics for site {site}, language {language!r}; have sites "
                f"{', '.join(map(str, self.sites)) or 'none'} and languages {', '.join(self.languages) or 'none'}"
            )
        return state

    def count(self, site: Site, language: str) -> int:
        """How many values (tokens or sentences) each neuron at ``site`` has seen for ``language``."""
        return self._get(site, language).count

    def count_positive(self, site: Site, language: str) -> Int[Tensor, " neurons"]:
        """Per neuron: how many values were ``> 0``."""
        return self._get(site, language).positive.cpu().clone()

    def probability(self, site: Site, language: str) -> Float[Tensor, " neurons"]:
        """Per neuron: the fraction of values ``> 0`` (LAPE's activation probability)."""
        state = self._get(site, language)
        return state.positive.double().cpu() / state.count

    def mean(self, site: Site, language: str) -> Float[Tensor, " neurons"]:
        state = self._get(site, language)
        return state.total.cpu() / state.count

    def std(self, site: Site, language: str, *, ddof: int = 0) -> Float[Tensor, " neurons"]:
        """Per-neuron standard deviation (``ddof=0``: population, as numpy; ``ddof=1``: sample)."""
        state = self._get(site, language)
        if state.count <= ddof:
            raise StatsError(
                f"{site} ({language}): std with ddof={ddof} needs more than {ddof} values, have {state.count}"
            )
        mean = state.total / state.count
        variance = (state.squares - state.count * mean.square()).clamp(min=0) / (state.count - ddof)
        return variance.sqrt().cpu()

    def min(self, site: Site, language: str) -> Float[Tensor, " neurons"]:
        return self._get(site, language).low.cpu().clone()

    def max(self, site: Site, language: str) -> Float[Tensor, " neurons"]:
        return self._get(site, language).high.cpu().clone()

    def bin_width(self, site: Site, language: str) -> Float[Tensor, " neurons"]:
        """Per-neuron histogram bin width: the accuracy of :meth:`quantile`."""
        self._need_histogram()
        return self._get(site, language).hist_width.cpu().clone()

    def quantile(self, site: Site, language: str, q: float) -> Float[Tensor, " neurons"]:
        """Per-neuron ``q``-quantile estimate (``q`` in [0, 1]; 0.5 = median, ``on_p50``; 0.9 = ``on_p90``)."""
        self._need_histogram()
        if not 0 <= q <= 1:
            raise StatsError(f"quantile q must be in [0, 1], got {q}")
        state = self._get(site, language)
        if q in (0, 1):  # the exact extremes are known
            return (state.low if q == 0 else state.high).cpu().clone()
        # 0-based fractional rank, as numpy's linear interpolation
        rank = torch.tensor(q * (state.count - 1), dtype=torch.float64, device=state.hist.device)
        cumulative = state.hist.long().cumsum(dim=1)
        # bin holding order statistic floor(rank): the first bin whose cumulative count exceeds it
        target = rank.floor().long().expand(cumulative.shape[0], 1).contiguous()
        index = torch.searchsorted(cumulative, target, right=True)
        index = index.clamp(max=self.bins - 1)
        before = torch.where(index > 0, cumulative.gather(1, (index - 1).clamp(min=0)), 0).squeeze(1).double()
        inside = state.hist.gather(1, index).squeeze(1).double().clamp(min=1)
        fraction = ((rank - before + 0.5) / inside).clamp(0, 1)
        estimate = state.hist_start + (index.squeeze(1).double() + fraction) * state.hist_width
        return torch.minimum(torch.maximum(estimate, state.low), state.high).cpu()

    def _need_histogram(self) -> None:
        if not self.bins:
            raise StatsError("these statistics keep no histogram (bins=0); collect with bins > 0 for quantiles")

    def probabilities(
        self, sites: Sequence[Site] | None = None, languages: Sequence[str] | None = None
    ) -> Float[Tensor, "layers neurons languages"]:
        """Activation probabilities stacked as ``(site, neuron, language)`` (LAPE's input), sites in order."""
        sites = list(sites) if sites is not None else self.sites
        languages = list(languages) if languages is not None else self.languages
        return torch.stack(
            [torch.stack([self.probability(site, lang) for lang in languages], dim=-1) for site in sites]
        )

    def state_dict(self) -> dict[str, Tensor]:
        """Every accumulator, keyed ``'SITE/LANGUAGE/name'`` (its size is independent of the data's size)."""
        out = {}
        for (site, language), state in self._state.items():
            for name, tensor in state.tensors().items():
                out[f"{site}/{language}/{name}"] = tensor.cpu()
            out[f"{site}/{language}/count"] = torch.tensor(state.count)
        return out

    def __repr__(self) -> str:
        return (
            f"NeuronStats(per={self.per!r}, bins={self.bins}, sites=[{' '.join(map(str, self.sites))}], "
            f"languages=[{' '.join(self.languages)}])"
        )


@takes_bundle
def collect_stats(
    model,
    tokenizer,
    corpus: ParallelCorpus,
    sites: Iterable[Site],
    *,
    languages: Sequence[str] | None = None,
    per: str = "token",
    pooling: str = "mean",
    bins: int = 128,
    tokenization: Tokenization = Tokenization(),
    progress: Progress = False,
) -> NeuronStats:
    """Run ``corpus`` (one language at a time) through ``model`` and accumulate :class:`NeuronStats` at ``sites``.

    ``per="token"``: statistics over every counted token but the BOS (nothing is pooled; see
    :func:`probes.capture.capture`'s ``count_bos``). ``per="sentence"``: over the
    sentences' ``pooling``-pooled vectors. ``head`` sites are flattened to ``heads * head_dim`` neurons.
    Under ``torchrun`` the languages are split across the ranks and every rank returns all of them.
    """
    if per not in PER:
        raise StatsError(f"per must be one of {', '.join(PER)}, got {per!r}")
    if per == "sentence":
        check_pooling(pooling)
    sites = sorted(set(sites))
    stats = NeuronStats(bins, per=per)
    stats.model = model_identity(model)
    chosen = list(languages) if languages is not None else list(corpus.languages)
    group = ranks()
    with progress_bar(progress if group.is_main else False, "statistics") as bar:
        for language in group.mine(chosen):
            bar.set_description(f"statistics {language}")
            texts = corpus.texts(language)
            with naming(language):
                if per == "token":
                    feed = stats.on_tokens(language)
                    capture(
                        model,
                        tokenizer,
                        texts,
                        sites,
                        pooling=None,
                        on_tokens=feed,
                        tokenization=tokenization,
                        progress=bar,
                    )
                else:
                    pooled = capture(
                        model, tokenizer, texts, sites, pooling=pooling, tokenization=tokenization, progress=bar
                    )
                    for site, values in pooled.items():
                        stats.add(site, language, values.reshape(values.shape[0], -1))
    if group.world > 1:  # each language was accumulated whole by one rank: gathering them is exact
        parts = group.gather(stats._state)
        stats._state = {key: part[key] for language in chosen for part in parts for key in part if key[1] == language}
    return stats
