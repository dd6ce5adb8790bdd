"""Recording: tokenisation, the forward-pass context, record/trace (per token), pooled capture into Activations,
streaming neuron statistics, MoE router traces, and the on-disk ActivationStore."""

from probes.analysis.activations import NonFiniteError
from probes.capture.bundle import Bundle, BundleError
from probes.capture.context import ContextError, ForwardContext
from probes.capture.pooled import capture, capture_batches, capture_corpus, pooling_during
from probes.capture.pooling import POOLINGS, PoolingError, pool
from probes.capture.record import Recording, record, trace, watch
from probes.capture.router_trace import RouterTrace, RouterTraceError, trace_batches, trace_router
from probes.capture.stats import NeuronStats, StatsError, collect_stats
from probes.capture.store import ActivationStore, StoreError, capture_to_store
from probes.capture.tokenization import Batch, Tokenization, TokenizationError, batches

__all__ = [
    "Bundle",
    "BundleError",
    "POOLINGS",
    "ActivationStore",
    "Batch",
    "ContextError",
    "ForwardContext",
    "NeuronStats",
    "NonFiniteError",
    "PoolingError",
    "Recording",
    "RouterTrace",
    "RouterTraceError",
    "StatsError",
    "StoreError",
    "Tokenization",
    "TokenizationError",
    "batches",
    "capture",
    "capture_batches",
    "capture_corpus",
    "capture_to_store",
    "collect_stats",
    "pool",
    "pooling_during",
    "record",
    "trace",
    "trace_batches",
    "trace_router",
    "watch",
]
