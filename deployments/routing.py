"""Replica choice for the engines: Ray Serve LLM's prefix-cache affinity, for token-id prompts too.

`PrefixCacheAffinityRouter` keeps a prefix tree of the prompt *text* each replica has seen
and sends a request to the replica that already holds the longest share of its prefix in
its KV cache (when load is balanced). Verified escalation calls the Validator with token
ids (prompt + draft, then prompt + accepted prefix): Ray's router reads those as an empty
text, so the continuation could land on a replica that never saw the scoring pass. Here
token ids become text too, one character per token, so the continuation follows its
prefix like any other request.
"""

from __future__ import annotations

from typing import Any

from ray.serve.llm.request_router import PrefixCacheAffinityRouter

# Token ids map into the supplementary planes: one character per token, never a real character of a prompt.
_TOKEN_BASE = 0x10000


class TokenPrefixAffinityRouter(PrefixCacheAffinityRouter):
    """`PrefixCacheAffinityRouter` that also routes prompts given as token ids by their prefix."""

    def _coerce_to_text(self, value: Any) -> str:
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            return "".join(chr(_TOKEN_BASE + v) for v in value if 0 <= v < 0x10FFFF - _TOKEN_BASE)
        return super()._coerce_to_text(value)

    def _extract_text_from_request(self, pending_request: Any) -> str | None:
        # None, not "": Ray's router computes a match rate over the text's length (ZeroDivisionError).
        return super()._extract_text_from_request(pending_request) or None

    def _normalize_prompt_to_string(self, prompt: Any) -> str:
        if isinstance(prompt, list) and prompt and all(isinstance(v, int) for v in prompt):
            return self._coerce_to_text(prompt)
        return super()._normalize_prompt_to_string(prompt)
