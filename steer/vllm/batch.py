"""The requests of vLLM's running batch, as xlalign sees a forward pass: each request's slice of the flattened
``(num_tokens, ...)`` tensors and its :class:`~probes.capture.context.ForwardContext` (one row: that request).

vLLM runs every scheduled request in one pass with their tokens concatenated; the attention metadata's
``query_start_loc`` gives each request's slice in the model runner's request order. A request's token ``j``
of this pass sits at position ``num_computed_tokens + j`` of its own sequence (prompt, then generated tokens),
so positions, decode steps and the prompt length mean exactly what they mean for one unpadded example in the
``hf`` backend, whatever was batched beside it, chunked or served from the prefix cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from probes.capture.context import ForwardContext
from steer.errors import EngineError

# SamplingParams.extra_args[KEY] = {"plan": name or None, "language": code or None, "capture": tag or None,
# "index": the prompt's index in its generate call or capture}; a server request's vllm_xargs hold flat "xlalign_plan" and
# "xlalign_language" (vLLM's request fields allow no nesting).
KEY = "xlalign"


@dataclass(frozen=True)
class Request:
    """One request of the pass: its slice ``[start, stop)`` of the flattened tokens and what it asked for."""

    key: str  # vLLM's request id
    start: int
    stop: int
    plan: str | None
    language: str | None
    capture: str | None
    index: int
    context: ForwardContext


def request_context(computed: int, tokens: int, prompt_length: int, example: int = 0) -> ForwardContext:
    """The context of ``tokens`` new tokens of one request after ``computed`` already in its KV cache (``example``:
    the prompt's index in its ``generate`` call, which a ``Patch`` reads its values by)."""
    position = torch.arange(computed, computed + tokens)[None]
    valid = torch.ones(1, tokens, dtype=torch.bool)
    return ForwardContext(
        valid=valid,
        position=position,
        prompt_length=torch.tensor([prompt_length]),
        decode_step=(position - prompt_length + 1).clamp(min=0),
        prompt_mask=torch.ones(1, prompt_length, dtype=torch.bool),
        columns=position[0],
        example=torch.tensor([example]),
        counted=valid,
        input_ids=None,
        call=0,
        first_new=computed,
    )


def xlalign_requests(runner: Any) -> list[Request]:
    """The requests of the current forward pass that name an xlalign plan or capture (empty outside a model pass)."""
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if not is_forward_context_available():  # vLLM's own dummy passes (profiling, warm-up): no request runs
        return []
    current = get_forward_context()  # a new object for every forward pass: the requests are found once per pass
    if _LAST_PASS[0] is current:
        return _LAST_PASS[1]
    found = _requests(runner, current)
    _LAST_PASS[:] = [current, found]
    return found


_LAST_PASS: list = [None, []]  # (the forward context of the last pass, its requests)


def _requests(runner: Any, current: Any) -> list[Request]:
    batch = runner.input_batch
    asking = []
    for row, request_id in enumerate(batch.req_ids[: batch.num_reqs]):
        state = runner.requests.get(request_id)
        asked = _asked(state.sampling_params.extra_args or {}) if state and state.sampling_params else None
        if asked:
            asking.append((row, request_id, state, asked))
    if not asking:
        return []
    metadata = current.attn_metadata
    metadata = (metadata[0] if metadata else None) if isinstance(metadata, list) else metadata
    starts = next((m.query_start_loc for m in (metadata or {}).values() if hasattr(m, "query_start_loc")), None)
    if starts is None:  # never run a plan's request unsteered: stop loudly instead
        raise EngineError(
            "this vLLM attention backend gives no query_start_loc, so xlalign cannot find each request's tokens"
        )
    starts = starts.tolist()
    found = []
    for row, request_id, state, asked in asking:
        start, stop = starts[row], starts[row + 1]
        index = asked.get("index", 0)
        context = request_context(state.num_computed_tokens, stop - start, len(state.prompt_token_ids), index)
        plan, language, capture = asked.get("plan"), asked.get("language"), asked.get("capture")
        found.append(Request(request_id, start, stop, plan, language, capture, index, context))
    return found


def _asked(extra: dict) -> dict | None:
    if KEY in extra:
        return extra[KEY]
    if "xlalign_plan" in extra:
        return {"plan": extra["xlalign_plan"], "language": extra.get("xlalign_language")}
    return None
