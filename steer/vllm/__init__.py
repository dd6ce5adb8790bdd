"""xlalign's plans inside vLLM: ``vllm_engine(spec)`` starts an engine whose workers apply installed plans per
request (:mod:`steer.vllm.engine`). Importing this package does not import vLLM."""

from steer.vllm.engine import WORKER_EXTENSION, VLLMEngine, vllm_engine
from steer.vllm.plugin import save_plan as save_vllm_plan

__all__ = ["WORKER_EXTENSION", "VLLMEngine", "save_vllm_plan", "vllm_engine"]
