"""Artifacts: what the finders find, saved as safetensors + JSON and checked against the model they are used on."""

from probes.artifacts.base import (
    Artifact,
    ArtifactError,
    artifact_digest,
    artifact_kind,
    check_model,
    nonfinite,
    read_artifact,
)
from probes.artifacts.detector import LanguageDetector
from probes.artifacts.eraser import ERASER_COMPONENTS, Eraser
from probes.artifacts.linear_map import MAP_COMPONENTS, MAP_METHODS, LinearMap, map_formula
from probes.artifacts.neuron_set import NeuronError, NeuronSet
from probes.artifacts.shift_vector import ShiftVector

KINDS = {cls.KIND: cls for cls in (NeuronSet, ShiftVector, LinearMap, Eraser, LanguageDetector)}


def load_artifact(path, model=None) -> Artifact:
    """Load whichever artifact ``path`` holds (checked against ``model`` when given)."""
    kind = artifact_kind(path)
    if kind not in KINDS:
        raise ArtifactError(f"{path} holds a {kind!r}, which is not an xlalign artifact kind ({', '.join(KINDS)})")
    return KINDS[kind].load(path, model=model)


__all__ = [
    "ERASER_COMPONENTS",
    "KINDS",
    "MAP_COMPONENTS",
    "MAP_METHODS",
    "Artifact",
    "ArtifactError",
    "Eraser",
    "LanguageDetector",
    "LinearMap",
    "NeuronError",
    "NeuronSet",
    "ShiftVector",
    "artifact_digest",
    "artifact_kind",
    "check_model",
    "load_artifact",
    "map_formula",
    "nonfinite",
    "read_artifact",
]
