"""How a model spec is loaded and run, as one frozen value: the command line builds it once and every job takes
it (a new loading option is one field here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class Loading:
    """``device`` and ``device_map`` (multi-GPU placement) to load on, ``dtype``, and the ``backend`` that runs
    the model (``hf``, ``tl``: TransformerLens, ``nnsight``); checked when a model is resolved with them."""

    device: str = "cpu"
    device_map: str | dict | None = None
    dtype: str = "float32"
    backend: str = "hf"

    def resolve(self, model, tokenizer=None):
        """``(model, tokenizer)`` from a spec (loaded with these options) or an object (used as it is), run
        through the backend (:func:`probes.model.resolve_model`)."""
        from probes.model.loading import resolve_model

        return resolve_model(model, tokenizer, **asdict(self))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))
