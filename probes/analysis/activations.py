"""Activations: pooled vectors per (site, language), sentence-aligned across languages; the one noun every metric,
finder and figure takes. :class:`probes.capture.store.ActivationStore` is its on-disk, read-only twin.

``acts.get(Site(6, "resid"), "deu")`` is ``(n, *shape)``: row i of every language is sentence i. Every read
refuses inf and NaN (:class:`NonFiniteError`, naming site, layer, language and dtype), so no metric or finder
computes on them.
``acts.by_layer("resid")`` yields ``(layer, {language: (n, *shape)})`` one layer at a time (a store reads one
layer at a time). Sites are the :class:`probes.model.Site` objects the activations were captured at (this module
reads only their ``layer`` and ``component``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType

import torch
from jaxtyping import Float
from torch import Tensor

from probes.errors import XlalignError


class ActivationsError(XlalignError):
    """Activations that do not fit together, or a site or language they do not hold."""


class NonFiniteError(ActivationsError):
    """Activations holding inf or NaN (a model that overflows in its dtype, or a broken edit); build it with
    :func:`non_finite`, which names the site, layer, language and dtype and says what to do."""

    site: object = None
    language: str | None = None
    dtype: str | None = None
    where: str | None = None

    def of(self, language: str) -> NonFiniteError:
        """The same error naming ``language`` (for callers that know which language was being captured)."""
        return non_finite(self.site, language, self.dtype, where=self.where)


def non_finite(
    site: object,
    language: str | None = None,
    dtype: object = None,
    *,
    where: str | None = None,
    captured: bool = False,
    kind: type[NonFiniteError] = NonFiniteError,
) -> NonFiniteError:
    """The error (a ``kind``) for non-finite values at ``site`` (of ``language``) computed in ``dtype``;
    ``captured``: they were read back from an earlier capture (the advice is then to capture again)."""
    dtype = str(dtype).removeprefix("torch.") if dtype is not None else None
    layer = getattr(site, "layer", None)
    text = f"{site}" + (f" (layer {layer})" if layer is not None else "") + (f" of {language}" if language else "")
    again = "capture again with" if captured else "use"
    if dtype in ("float16", "bfloat16"):
        wider = "bfloat16 or float32" if dtype == "float16" else "float32"
        cause = f" in {dtype}: the model overflows in this dtype; {again} --dtype {wider}"
    else:
        cause = (f" in {dtype}" if dtype else "") + ": the model (its weights, its input or an edit) produces them"
    error = kind(f"{where + ': ' if where else ''}{text} holds non-finite values (inf/NaN){cause}")
    error.site, error.language, error.dtype, error.where = site, language, dtype, where
    return error


def check_finite(
    values: Tensor,
    site: object,
    language: str | None = None,
    *,
    dtype: object = None,
    where: str | None = None,
    captured: bool = True,
) -> Tensor:
    """``values`` unchanged, or :func:`non_finite`'s error if any is inf or NaN (``dtype``: the model's, default
    that of ``values``). The one check every finder's input passes through."""
    if not bool(torch.isfinite(values).all()):
        raise non_finite(site, language, dtype if dtype is not None else values.dtype, where=where, captured=captured)
    return values


class Activations:
    """In-memory pooled activations. ``data``: ``{(site, language): (n, *shape) tensor}``.

    ``model`` is the identity of the model they came from (:func:`probes.model.model_identity`), ``pooling`` how
    tokens were pooled, ``ids`` the corpus sentence ids of the rows.
    """

    Error = ActivationsError  # what lookups raise (the store raises its own subclass)

    def __init__(
        self,
        data: Mapping[tuple[object, str], Float[Tensor, "n *shape"]],
        *,
        model: Mapping | None = None,
        pooling: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        if not data:
            raise ActivationsError("Activations need at least one (site, language) entry")
        shapes: dict[str, tuple[int, ...]] = {}
        self._data: dict[tuple[str, str], Tensor] = {}
        self._sites: dict[str, object] = {}
        for (site, language), tensor in data.items():
            if not hasattr(site, "layer") or not hasattr(site, "component"):
                raise ActivationsError(f"keys are (Site, language) pairs; got site {site!r}")
            if not isinstance(tensor, Tensor) or tensor.dim() < 2:
                raise ActivationsError(f"{site} ({language}): expected an (n, *shape) tensor, got {_shape(tensor)}")
            shape = shapes.setdefault(str(site), tuple(tensor.shape))
            if tuple(tensor.shape) != shape:
                raise ActivationsError(
                    f"{site}: language {language!r} has shape {tuple(tensor.shape)}, another language {shape}; "
                    "every language needs the same sentences and the same vector shape"
                )
            self._sites[str(site)] = site
            self._data[str(site), str(language)] = tensor
        counts = {shape[0] for shape in shapes.values()}
        if len(counts) > 1:
            raise ActivationsError(f"sites hold different numbers of sentences: {sorted(counts)}")
        self._n = counts.pop()
        if ids is not None and len(ids) != self._n:
            raise ActivationsError(f"{len(ids)} sentence ids for {self._n} rows")
        self._languages = list(dict.fromkeys(language for _, language in self._data))
        self._model = MappingProxyType(dict(model or {}))
        self._pooling = pooling
        self._ids = None if ids is None else tuple(ids)

    # ---- what every Activations-like object provides ------------------------------------------------------

    @property
    def sites(self) -> list:
        return sorted(self._sites.values())

    @property
    def languages(self) -> list[str]:
        return list(self._languages)

    @property
    def model(self) -> Mapping:
        return self._model

    @property
    def pooling(self) -> str | None:
        return self._pooling

    @property
    def ids(self) -> tuple[str, ...] | None:
        return self._ids

    def __len__(self) -> int:
        """The number of sentences (rows of every tensor)."""
        return self._n

    def where(self) -> str:
        return "the activations"

    def _load(self, site: object, language: str) -> Tensor:
        return self._data[str(site), language]

    def _read(self, site: object, language: str) -> Tensor:
        """:meth:`_load`, refusing inf and NaN (naming the site, language and the model's dtype)."""
        dtype = self.model.get("dtype")
        return check_finite(self._load(site, language), site, language, dtype=dtype, where=self.where())

    # ---- shared behaviour --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sentences={len(self)}, languages=[{' '.join(self.languages)}], "
            f"sites=[{' '.join(map(str, self.sites))}], pooling={self.pooling!r})"
        )

    def get(self, site: object, language: str) -> Float[Tensor, "n *shape"]:
        """The pooled vectors of ``language`` at ``site`` (a Site or its text, ``'resid.6'``), in corpus order."""
        names = [str(s) for s in self.sites]
        if str(site) not in names:
            raise self.Error(f"{self.where()}: site {site} was not captured; captured: {', '.join(names)}")
        if language not in self.languages:
            raise self.Error(f"{self.where()}: language {language!r} not captured; have {', '.join(self.languages)}")
        return self._read(self.sites[names.index(str(site))], language)

    def __getitem__(self, key: tuple[object, str]) -> Tensor:
        site, language = key
        return self.get(site, language)

    def layers(self, component: str = "resid") -> list[int]:
        """The layers captured at ``component``, ascending."""
        return sorted(site.layer for site in self.sites if site.component == component)

    def by_layer(
        self, component: str = "resid", languages: Sequence[str] | None = None, layers: Sequence[int] | None = None
    ) -> Iterator[tuple[int, dict[str, Float[Tensor, "n *shape"]]]]:
        """Yield ``(layer, {language: (n, *shape)})`` for the ``component`` layers, one layer at a time.

        ``languages`` and ``layers`` default to all; asking for one that is not there is an error.
        """
        available = self.layers(component)
        if not available:
            have = ", ".join(sorted({site.component for site in self.sites}))
            raise self.Error(f"{self.where()} holds no {component!r} sites; it has components {have}")
        missing = sorted(set(layers or ()) - set(available))
        if missing:
            raise self.Error(f"{self.where()} has no {component} layers {missing}; it has {available}")
        wanted = list(languages) if languages is not None else self.languages
        unknown = [language for language in wanted if language not in self.languages]
        if unknown:
            raise self.Error(f"{self.where()}: languages {unknown} not captured; have {', '.join(self.languages)}")
        sites = {site.layer: site for site in self.sites if site.component == component}
        for layer in available:
            if layers is None or layer in layers:
                yield layer, {language: self._read(sites[layer], language) for language in wanted}

    def select(self, languages: Sequence[str] | None = None, component: str | None = None) -> Activations:
        """An in-memory copy restricted to ``languages`` and the sites of ``component`` (all when None)."""
        wanted = list(languages) if languages is not None else self.languages
        sites = [site for site in self.sites if component is None or site.component == component]
        if not sites:
            raise self.Error(f"{self.where()} holds no {component!r} sites")
        data = {(site, language): self.get(site, language) for site in sites for language in wanted}
        return Activations(data, model=self.model, pooling=self.pooling, ids=self.ids)


def _shape(value: object) -> str:
    return f"shape {tuple(value.shape)}" if hasattr(value, "shape") else type(value).__name__
