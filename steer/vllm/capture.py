"""Capture through vLLM: per-token (``record``) and pooled (``capture``) activations of texts, as the ``hf``
backend's :func:`probes.capture.trace` and :func:`probes.capture.capture` give them.

Each text is one request of a one-token generation (its prompt pass is what is read), tokenised by the same
:class:`~probes.capture.Tokenization` as the ``hf`` backend; every worker records the sites of the requests that
name the capture (after the edits of a plan the request also names), and returns them as safetensors bytes. A
captured request carries a prefix-cache salt of its own, so every token it reads is computed, never served from
the cache. Under tensor parallelism ``mlp_act`` and ``head`` are put together from every rank's slice; the
residual stream and router logits are read from the first rank. Pooling is :func:`probes.capture.pool`, on the
same token mask.
"""

from __future__ import annotations

import uuid
from typing import Sequence

import torch
from jaxtyping import Float
from safetensors.torch import load as load_tensors
from torch import Tensor

from probes.capture import Tokenization, pool
from probes.model import Site
from probes.model.moe import routing_view
from steer.errors import EngineError
from steer.vllm.batch import KEY
from steer.vllm.points import SHARDED

SOFTMAX_ROUTED = ("mixtral", "olmoe", "qwen2_moe", "qwen3_moe", "granitemoe")


class Capturing:
    """What :class:`~steer.vllm.engine.VLLMEngine` reads: :meth:`record` (per token), :meth:`capture` (pooled)."""

    def record(
        self,
        texts: Sequence[str],
        sites: Sequence[Site],
        *,
        tokenization: Tokenization = Tokenization(),
        plans: str | Sequence[str | None] | None = None,
        languages: str | Sequence[str | None] | None = None,
    ) -> dict[Site, list[Float[Tensor, "tokens *shape"]]]:
        """Per site, one tensor per text: the activation of each of its tokens (float32, on the CPU); ``plans`` and
        ``languages`` as in :meth:`~steer.vllm.engine.VLLMEngine.generate`."""
        return self._record_ids(tokenization.encode(self.tokenizer, texts), sites, plans, languages)

    def _record_ids(self, ids: list[list[int]], sites: Sequence[Site], plans, languages) -> dict[Site, list[Tensor]]:
        tag = uuid.uuid4().hex
        problems = {p for p in self.llm.collective_rpc("xlalign_capture", args=(tag, [str(s) for s in sites])) if p}
        if problems:
            self.llm.collective_rpc("xlalign_take", args=(tag,))
            raise EngineError("; ".join(sorted(problems)))
        requests, params = self.requests(ids, plans=plans, languages=languages, max_tokens=1)
        for index, (request, chosen) in enumerate(zip(requests, params)):
            extra = dict(chosen.extra_args or {})
            extra[KEY] = {**extra.get(KEY, {}), "capture": tag, "index": index}
            chosen.extra_args = extra
            request["cache_salt"] = f"xlalign-capture/{tag}/{index}"
        try:
            self.llm.generate(requests, params, use_tqdm=False)
        finally:
            ranks = [load_tensors(blob) for blob in self.llm.collective_rpc("xlalign_take", args=(tag,))]
        return {site: [self._tokens(ranks, f"{i}.{site}", site) for i in range(len(ids))] for site in sites}

    def capture(
        self,
        texts: Sequence[str],
        sites: Sequence[Site],
        *,
        pooling: str = "mean",
        tokenization: Tokenization = Tokenization(),
        plans: str | Sequence[str | None] | None = None,
        languages: str | Sequence[str | None] | None = None,
    ) -> dict[Site, Float[Tensor, "n *shape"]]:
        """Per site, one pooled vector per text (``pooling`` as :func:`probes.capture.pool`; BOS left out of it with
        ``tokenization.exclude_bos``), in the order of ``texts``."""
        ids = tokenization.encode(self.tokenizer, texts)
        recorded = self._record_ids(ids, sites, plans, languages)
        bos = self.tokenizer.bos_token_id if tokenization.exclude_bos else None
        masks = [torch.tensor([token != bos for token in row]) for row in ids]
        return {
            site: torch.stack([pool(tokens[None], mask[None], pooling)[0] for tokens, mask in zip(per_text, masks)])
            for site, per_text in recorded.items()
        }

    def loss(
        self,
        texts: Sequence[str],
        *,
        tokenization: Tokenization = Tokenization(),
        plans: str | Sequence[str | None] | None = None,
        languages: str | Sequence[str | None] | None = None,
    ) -> float:
        """Mean next-token cross-entropy over every prediction of ``texts`` (token-weighted), from vLLM's prompt
        log-probabilities: :func:`steer.evaluate.next_token_loss` as the ``hf`` backend computes it."""
        from vllm import SamplingParams

        ids = tokenization.encode(self.tokenizer, texts)
        scoring = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        requests, params = self.requests(ids, plans=plans, languages=languages, sampling=scoring)
        for index, request in enumerate(requests):
            request["cache_salt"] = f"xlalign-loss/{uuid.uuid4().hex}/{index}"  # every prompt token is computed
        total, count = 0.0, 0
        for row, output in zip(ids, self.llm.generate(requests, params, use_tqdm=False)):
            for token, logprobs in zip(row[1:], output.prompt_logprobs[1:]):
                total -= logprobs[token].logprob
                count += 1
        if not count:
            raise EngineError("next-token loss: the texts have no token with a successor (each is one token long)")
        return total / count

    def _tokens(self, ranks: list[dict[str, Tensor]], key: str, site: Site) -> Tensor:
        """One text's tokens at ``site``: every rank's slice of a sharded site put together, else the first rank's."""
        tokens = torch.cat([rank[key] for rank in ranks] if site.component in SHARDED else [ranks[0][key]], dim=-1)
        if site.component == "head":
            return tokens.float().unflatten(-1, self.site_shape(site))
        if site.component == "router":
            return routing_view_of_logits(self.llm.llm_engine.model_config.hf_text_config, tokens)
        return tokens.float()


def routing_view_of_logits(config, logits: Float[Tensor, "tokens experts"]) -> Float[Tensor, "tokens 3 experts"]:
    """The ``router`` site as the ``hf`` backend reads it (probabilities, renormalised top-k weights, top-k
    indicator) from a softmax-routed family's logits: the top-k of the logits is the top-k of the softmax."""
    if config.model_type not in SOFTMAX_ROUTED:
        raise EngineError(
            f"reading router sites of {config.model_type!r} through vLLM: its experts are not chosen by a top-k of "
            f"the softmax of the logits; read them with backend='hf' ({', '.join(SOFTMAX_ROUTED)} are supported)"
        )
    probs = logits.float().softmax(dim=-1)
    ids = logits.topk(config.num_experts_per_tok, dim=-1).indices
    return routing_view(probs, ids, probs.gather(-1, ids))
