"""xlalign's plans inside vLLM: ``vllm_engine(spec)`` starts an engine whose workers apply installed plans per
request (:mod:`steer.vllm.engine`). Importing this package does not import vLLM."""

from steer.vllm.engine import WORKER_EXTENSION, VLLMEngine, vllm_engine

__all__ = ["WORKER_EXTENSION", "VLLMEngine", "vllm_engine"]
