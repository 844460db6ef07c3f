"""In-engine speculative decoding for one vLLM engine (normally the Validator).

Request-level verification (`serving.verify`) checks a whole draft once, after the Scout
escalates. Speculative decoding works inside the engine, step by step: a cheap proposer
(a small draft model with the same tokenizer, n-grams looked up in the prompt, or a
suffix tree of earlier answers) guesses the next few tokens and the model checks them in
one forward pass. vLLM keeps the output distribution unchanged (greedy: the same tokens;
sampled: the standard speculative-sampling acceptance rule).

Speculation pays at low load and costs at high load (every rejected guess is wasted
compute in a full batch), so `max_concurrency` switches it off above a batch size with
vLLM's own dynamic schedule (`num_speculative_tokens_per_batch_size`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SpeculativeConfig(BaseModel):
    """Which proposer speculates for the engine, how far, and up to which load."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["none", "draft_model", "ngram", "suffix"] = Field(
        "none",
        description="'draft_model': a small model proposes (same tokenizer: the laptop pair); 'ngram': tokens "
        "looked up in the prompt; 'suffix': arctic-inference suffix decoding (optional, a source build); 'none'.",
    )
    draft_model: str | None = Field(
        None,
        description="Draft model for method 'draft_model': catalog name, folder or hub ID (default: the Scout's "
        "model).",
    )
    num_speculative_tokens: int = Field(4, ge=1, le=16, description="Tokens proposed per step.")
    prompt_lookup_min: int = Field(1, ge=1, description="Shortest n-gram matched in the prompt (method 'ngram').")
    prompt_lookup_max: int = Field(4, ge=1, description="Longest n-gram matched in the prompt (method 'ngram').")
    max_concurrency: int | None = Field(
        4,
        ge=1,
        description="Speculate only while the engine batches at most this many sequences; above it vLLM proposes "
        "nothing (its num_speculative_tokens_per_batch_size schedule). None: speculate at any load.",
    )
    heterogeneous_vocab: bool = Field(
        False,
        description="Allow a draft model whose vocabulary differs from the target's (vLLM's use_heterogeneous_vocab: "
        "drafts keep to the shared tokens).",
    )

    @model_validator(mode="after")
    def _lookup_bounds(self) -> SpeculativeConfig:
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(f"prompt_lookup_min ({self.prompt_lookup_min}) exceeds prompt_lookup_max "
                             f"({self.prompt_lookup_max})")
        return self

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def vllm_config(self, max_num_seqs: int, draft_source: str | None = None) -> dict[str, Any] | None:
        """vLLM's `speculative_config` for an engine batching at most `max_num_seqs` (None when off).

        `draft_source` is what vLLM loads as the draft model (resolved by the caller).
        """
        if not self.enabled:
            return None
        k = self.num_speculative_tokens
        spec: dict[str, Any] = {"method": self.method, "num_speculative_tokens": k}
        if self.method == "draft_model":
            if not draft_source:
                raise ValueError("speculative method 'draft_model' needs a draft model")
            spec["model"] = draft_source
            if self.heterogeneous_vocab:
                spec["use_heterogeneous_vocab"] = True
        elif self.method == "ngram":
            spec.update(prompt_lookup_min=self.prompt_lookup_min, prompt_lookup_max=self.prompt_lookup_max)
        n = self.max_concurrency
        if n is not None and n < max_num_seqs:
            # Inclusive batch-size ranges -> tokens proposed; 0 switches speculation off.
            spec["num_speculative_tokens_per_batch_size"] = [[1, n, k], [n + 1, max_num_seqs, 0]]
        return spec
