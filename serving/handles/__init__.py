"""The Ray-handle adapters: the core's interfaces over Ray Serve deployment handles.

Each wraps a `DeploymentHandle` (given by the composition root, `deployments.app.build_app`)
behind an interface of the core, so the pipeline never sees Ray:

* `ServeLLMEngine` — `LLMEngine` over a `ray.serve.llm` LLMServer (Scout, Validator);
* `ServeResponseCache` — `ResponseCache` over the SemanticCache deployment;
* `ServeEmbedder` — `Embedder` over the Embedder deployment (the cache's and the analyzer's).

Failures and timeouts are the callers' business (the stages decide what a failure means).
Nothing here imports Ray: a handle is whatever object answers `.method.remote(...)`.
"""

from serving.handles.cache import ServeResponseCache
from serving.handles.embedder import ServeEmbedder
from serving.handles.engine import ServeLLMEngine, error_from_engine

__all__ = ["ServeEmbedder", "ServeLLMEngine", "ServeResponseCache", "error_from_engine"]
