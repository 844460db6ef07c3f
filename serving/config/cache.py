"""Configuration of the semantic cache: its store, its embedder and its policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.config.deployment import DeploymentOptions, EmbedderDeployment
from serving.config.moved import reject_moved, to_deployment

_CACHE_MOVED = {**to_deployment("cache"),
                "admin_key": "moved to auth.admin_keys (a list of keys given by sha256, env or file)"}
# The Embedder had no num_replicas before (it always autoscaled), and a GPU share of its own.
_EMBEDDER_MOVED = to_deployment("cache.embedder", ("num_cpus", "num_gpus", "autoscaling", "max_ongoing_requests",
                                                   "max_queued_requests", "resources"))


class EmbedderConfig(BaseModel):
    """The sentence-embedding deployment (`Embedder`), scaled on its own."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "all-minilm-l6-v2",
        description="Catalog name (prepared by `infopt models prepare --embedder`), local folder or hub ID "
        "of a sentence-transformers model.",
    )
    dimension: int = Field(384, ge=1, description="Size of the model's embeddings (the store's vector size).")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Where the embedder runs.")
    torch_threads: int = Field(1, ge=1, description="CPU threads torch may use per replica.")
    max_batch_size: int = Field(32, ge=1, description="Most texts embedded in one `@serve.batch` call.")
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, description="How long a batch waits to fill before it is embedded."
    )
    deployment: EmbedderDeployment = Field(
        default_factory=EmbedderDeployment,
        description="Ray Serve options of the Embedder deployment (replicas, queues, CPUs and GPU share, resources).",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return reject_moved(data, "cache.embedder", _EMBEDDER_MOVED)

    @model_validator(mode="after")
    def _batch_can_fill(self) -> EmbedderConfig:
        # Ray hands a replica at most max_ongoing_requests texts at once: fewer and no batch ever fills.
        if self.deployment.max_ongoing_requests < self.max_batch_size:
            raise ValueError(f"cache.embedder.deployment.max_ongoing_requests ({self.deployment.max_ongoing_requests})"
                             f" is below max_batch_size ({self.max_batch_size}): a batch could never fill")
        return self


class VerifierConfig(BaseModel):
    """The pair verifier: the vector search proposes cached questions, a model reading both questions decides.

    Off by default (`model` None): the similarity threshold decides, as it always did. With a verifier, a
    candidate at similarity >= `propose_threshold` that the guards let through is scored by the verifier and
    served when its score reaches `threshold` (or the calibrated one); a verifier that is not prepared leaves
    the threshold rule, one that times out or fails makes the lookup a miss (never an error)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        description="What verifies: a cross-encoder (the catalog's 'qqp-cross-encoder-minilm-l6', trained by `infopt "
        "models prepare --verifier`, a folder or a hub ID), or 'validator' / 'scout': that cascade model is asked "
        "'same question?' and its first token's log-probabilities give the score (one short prefill per pair; "
        "raise `timeout_s` on CPUs); None: no verifier.",
    )
    propose_threshold: float = Field(
        0.8, ge=0, le=1, description="Lowest cosine similarity at which a cached question is proposed to the verifier."
    )
    threshold: float = Field(
        0.5, ge=0, le=1,
        description="Verifier score (probability of a paraphrase) a proposed candidate needs to be served; a "
        "calibration file's certified verifier threshold replaces it.",
    )
    max_pairs: int = Field(4, ge=1, le=32, description="Most candidates scored per lookup (most similar first).")
    timeout_s: float = Field(
        0.5, gt=0, description="A verification slower than this is abandoned: the lookup is a miss, not an error. "
        "Must be below `cache.timeout_s`, the whole lookup's limit.",
    )
    torch_threads: int = Field(1, ge=1, description="CPU threads torch may use for the verifier.")


class CacheConfig(BaseModel):
    """When an answer is served from the cache, what is admitted, and where it is kept.

    Lookup is exact first (a hash of the whole normalised request), then semantic: the last
    user turn's embedding against entries with the same context, model, parameters and
    namespace, at similarity >= `similarity_threshold`, then the false-hit guards.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Consult the cache before the Scout and admit answers after.")
    backend: Literal["edge", "server"] = Field(
        "edge",
        description="'edge': the Qdrant engine in-process (qdrant-edge-py), persisted under `path`, one cache "
        "replica; 'server': a Qdrant server through qdrant-client at `url` (many replicas).",
    )
    path: Path | None = Field(
        None, description="Folder of the embedded store (default: <cache_dir>/semantic-cache/<profile>)."
    )
    url: str | None = Field(None, description="Qdrant server URL for backend 'server', e.g. http://qdrant:6333.")
    api_key: str | None = Field(None, description="Qdrant server API key (env INFOPT_CACHE__API_KEY).")
    collection: str = Field("infopt_cache", description="Qdrant collection (server) or shard folder name (edge).")
    similarity_threshold: float = Field(
        0.95,
        ge=0,
        le=1,
        description="Cosine similarity a semantic hit needs (chosen with scripts/eval_cache.py on QQP for <= 1% "
        "false hits; see docs/benchmarks.md).",
    )
    draft_threshold: float | None = Field(
        0.8,
        ge=0,
        le=1,
        description="Near misses: the most similar cached answer with similarity >= this that is not served (below "
        "similarity_threshold, or vetoed by a guard) is verified by the Validator as a draft (greedy requests, "
        "tiering.verified_escalation on); None turns it off. Above similarity_threshold it changes nothing.",
    )
    guards: bool = Field(
        True, description="Veto semantic hits whose negation, opposites, numbers or names differ."
    )
    candidates: int = Field(
        3, ge=1, le=32, description="Nearest entries checked by the guards before a semantic lookup is a miss."
    )

    admit_scout_min_confidence: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Scout answers are admitted only with confidence >= this (stricter than the tiering "
        "threshold); Validator answers are always final.",
    )
    admit_truncated: bool = Field(False, description="Also admit answers cut by max_tokens (finish_reason 'length').")
    admit_sampled: bool = Field(
        False,
        description="Cache sampled requests (temperature > 0 without a seed) without the request opting in "
        "(cache.allow_sampled).",
    )
    default_ttl_s: float = Field(86400.0, gt=0, description="Lifetime of an entry unless the request sets cache.ttl_s.")
    max_ttl_s: float = Field(30 * 86400.0, gt=0, description="Largest cache.ttl_s a request may ask for.")
    max_entries_per_namespace: int = Field(
        100_000, ge=1, description="Entries kept per namespace; beyond it the least recently hit are evicted."
    )
    sweep_interval_s: float = Field(60.0, gt=0, description="How often expired entries are deleted.")
    timeout_s: float = Field(
        2.0, gt=0, description="A lookup or admission slower than this is abandoned; the request bypasses the cache."
    )
    default_namespace: str = Field("default", description="Namespace of requests that do not name one.")
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig, description="The embedding deployment.")
    verifier: VerifierConfig = Field(default_factory=VerifierConfig,
                                     description="The pair verifier that decides among proposed candidates.")
    deployment: DeploymentOptions = Field(
        default_factory=DeploymentOptions,
        description="Ray Serve options of the SemanticCache deployment (replicas, queues, CPUs, resources); backend "
        "'edge' allows one replica.",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return reject_moved(data, "cache", _CACHE_MOVED)

    @model_validator(mode="after")
    def _backend_rules(self) -> CacheConfig:
        if self.backend == "edge" and self.deployment.max_replicas != 1:
            raise ValueError(
                "cache.backend 'edge' keeps the store inside one process (it locks its folder): "
                "cache.deployment.num_replicas (or autoscaling.max_replicas) must be 1; use backend 'server' with a "
                "Qdrant server for more replicas"
            )
        if self.backend == "server" and not self.url:
            raise ValueError("cache.backend 'server' needs cache.url (e.g. http://qdrant:6333)")
        if self.default_ttl_s > self.max_ttl_s:
            raise ValueError(f"default_ttl_s ({self.default_ttl_s}) exceeds max_ttl_s ({self.max_ttl_s})")
        if self.verifier.model is not None and self.verifier.timeout_s >= self.timeout_s:
            # Else a slow verification makes the whole lookup a bypass (no near-miss draft, no vector kept).
            raise ValueError(f"cache.verifier.timeout_s ({self.verifier.timeout_s}) must be below cache.timeout_s "
                             f"({self.timeout_s}), the whole lookup's limit")
        return self
