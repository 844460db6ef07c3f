"""Semantic cache (issue 3, in progress).

Built so far, not yet wired into the request path: `keys` (what makes two requests the same
question: exact key, context and parameter digests, the question to embed) and `guards`
(cheap vetoes of semantic hits whose meaning may differ).
"""
