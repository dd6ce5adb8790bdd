"""Pooled capture: one vector per text and site, reduced inside the hook (no per-token activations are kept).

``capture`` pools one list of texts; ``capture_corpus`` every language of a parallel corpus into the
:class:`~probes.analysis.activations.Activations` noun that every metric and finder takes. Both run the
decoder without its LM head in length-sorted batches and stop after the deepest needed layer. Every site of
every batch is checked for inf and NaN as it is produced (one reduction): the first one stops the capture with
a :class:`~probes.analysis.activations.NonFiniteError` naming the site, layer and dtype.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.capture.bundle import takes_bundle
from probes.analysis.activations import Activations, NonFiniteError, non_finite
from probes.capture.decoder import run_batches
from probes.capture.pooling import check_pooling, pool
from probes.capture.progress import Progress, progress_bar
from probes.capture.record import check_sites, watch
from probes.capture.tokenization import Batch, Tokenization, batches
from probes.data import ParallelCorpus
from probes.model.identity import model_identity
from probes.model.sites import Site

# on_tokens(site, values, rows): each batch's counted tokens (n, *shape) and the index of the text of each
# (without the BOS token unless asked: statistics count the text, as LAPE's released code does).
TokenCallback = Callable[[Site, Float[Tensor, "n *shape"], Int[Tensor, " n"]], None]


@takes_bundle
def capture(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    sites: Sequence[Site],
    *,
    pooling: str | None = "mean",
    tokenization: Tokenization = Tokenization(),
    on_tokens: TokenCallback | None = None,
    count_bos: bool = False,
    progress: Progress = False,
) -> dict[Site, Float[Tensor, "n *shape"]]:
    """Pooled activations of ``texts`` at ``sites``, in the order of ``texts`` (float32, on the CPU).

    ``on_tokens`` additionally receives each batch's counted tokens (for streaming statistics), the BOS token
    only with ``count_bos`` (the released LAPE code counts text without BOS, whose activation is the same in
    every language); with ``pooling=None`` only it is fed. ``head`` sites come out as ``(n, heads, head_dim)``.
    """
    work = batches(tokenizer, texts, tokenization, device=next(model.parameters()).device)
    skip = None if count_bos else tokenizer.bos_token_id
    return capture_batches(model, work, sites, pooling=pooling, on_tokens=on_tokens, skip_id=skip, progress=progress)


def capture_batches(
    model: nn.Module,
    work: Sequence[Batch],
    sites: Sequence[Site],
    *,
    pooling: str | None = "mean",
    on_tokens: TokenCallback | None = None,
    skip_id: int | None = None,
    progress: Progress = False,
) -> dict[Site, Float[Tensor, "n *shape"]]:
    """:func:`capture` on batches already tokenised (the rows of all batches together must be 0..n-1);
    ``on_tokens`` never receives tokens whose id is ``skip_id``."""
    chosen = check_sites(sites)
    with pooling_during(model, chosen, pooling, on_tokens=on_tokens, skip_id=skip_id) as pooled:
        run_batches(model, work, stop_after=max(site.layer for site in chosen), progress=progress, phase="capture")
    return pooled


@contextmanager
def pooling_during(
    model: nn.Module,
    sites: Sequence[Site],
    pooling: str | None = "mean",
    *,
    on_tokens: TokenCallback | None = None,
    skip_id: int | None = None,
) -> Iterator[dict[Site, Float[Tensor, "n *shape"]]]:
    """Pool ``sites`` over the forward passes that run inside the block (any caller's: a loss, ``generate``),
    one row per example index of one call's batches; the yielded dict is filled on exit."""
    if pooling is not None:
        check_pooling(pooling)
    chosen = check_sites(sites)
    parts: dict[Site, list[tuple[Tensor, Tensor]]] = {site: [] for site in chosen}

    def on_activation(site: Site, x: Tensor, ctx) -> None:
        check_tokens(site, x, ctx.valid)
        if pooling is not None:
            parts[site].append((ctx.example.cpu(), pool(x, ctx.counted, pooling).cpu()))
        if on_tokens is not None:
            skipping = skip_id is not None and ctx.input_ids is not None
            fed = ctx.counted & (ctx.input_ids != skip_id) if skipping else ctx.counted
            rows = ctx.example[:, None].expand(fed.shape)
            on_tokens(site, x[fed.to(x.device)], rows[fed])

    result: dict[Site, Tensor] = {}
    with watch(model, chosen, on_activation):
        yield result
    for site, pieces in parts.items():
        if pieces:
            rows = torch.cat([row for row, _ in pieces])
            stacked = torch.cat([value for _, value in pieces])
            result[site] = torch.empty_like(stacked)
            result[site][rows] = stacked


def check_tokens(site: Site, x: Float[Tensor, "batch tokens *shape"], valid: Tensor) -> None:
    """Raise :func:`~probes.analysis.activations.non_finite` if a valid token of ``x`` holds inf or NaN (pads may
    hold anything: they are never used). One sum per call (inf or NaN anywhere make it inf or NaN; it allocates
    nothing, unlike ``isfinite(x).all()``, 25x slower on a CPU); only when it is not finite (also when finite
    values overflow it) is every valid token looked at."""
    if bool(x.sum(dtype=torch.float32 if x.element_size() < 4 else None).isfinite()):
        return
    finite = torch.isfinite(x).flatten(2).all(dim=2) if x.dim() > 2 else torch.isfinite(x)
    if not bool((finite | ~valid.to(x.device)).all()):
        raise non_finite(site, dtype=x.dtype)


@contextmanager
def naming(language: str) -> Iterator[None]:
    """Add ``language`` to a :class:`~probes.analysis.activations.NonFiniteError` raised inside the block."""
    try:
        yield
    except NonFiniteError as error:
        raise error.of(language) from None


@takes_bundle
def capture_corpus(
    model: nn.Module,
    tokenizer,
    corpus: ParallelCorpus,
    sites: Sequence[Site],
    *,
    languages: Sequence[str] | None = None,
    pooling: str = "mean",
    tokenization: Tokenization = Tokenization(),
    progress: Progress = False,
) -> Activations:
    """Pooled ``sites`` of every sentence of ``corpus`` in each of ``languages`` (all when None)."""
    chosen = list(languages) if languages is not None else list(corpus.languages)
    pooled = {}
    with progress_bar(progress, "capture") as bar:
        for language in chosen:
            bar.set_description(f"capture {language}")
            with naming(language):
                pooled[language] = capture(
                    model,
                    tokenizer,
                    corpus.texts(language),
                    sites,
                    pooling=pooling,
                    tokenization=tokenization,
                    progress=bar,
                )
    data = {(site, language): values[site] for language, values in pooled.items() for site in values}
    return Activations(data, model=model_identity(model), pooling=pooling, ids=corpus.ids)
