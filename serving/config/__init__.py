"""Configuration: one pydantic model tree, one file per concern.

`AppConfig` is the root; `load_profile("tiny")` reads `cluster/tiny.yaml`.
"""

from serving.config.analyzer import AnalyzerConfig
from serving.config.api import ApiConfig, DashboardConfig
from serving.config.app import AppConfig, load_profile, profile_args, profile_names, profile_path, profiles_dir
from serving.config.auth import AuthConfig, KeySource, TenantConfig, key_digest
from serving.config.cache import CacheConfig, EmbedderConfig, VerifierConfig
from serving.config.deployment import AutoscalingConfig, DeploymentOptions, EmbedderDeployment, IngressDeployment
from serving.config.engine import EngineConfig
from serving.config.load import AdaptiveBatchingConfig, CascadeAutoscalingConfig, LoadConfig
from serving.config.priority import PriorityConfig
from serving.config.quality import AuditConfig, QualityConfig
from serving.config.speculative import SpeculativeConfig
from serving.config.strategies import StrategiesConfig
from serving.config.tiering import ConfidenceConfig, TieringConfig
from serving.config.tracing import TracingConfig

__all__ = [
    "AdaptiveBatchingConfig",
    "AnalyzerConfig",
    "ApiConfig",
    "AppConfig",
    "AuditConfig",
    "AuthConfig",
    "AutoscalingConfig",
    "CacheConfig",
    "CascadeAutoscalingConfig",
    "ConfidenceConfig",
    "DashboardConfig",
    "DeploymentOptions",
    "EmbedderConfig",
    "EmbedderDeployment",
    "EngineConfig",
    "IngressDeployment",
    "KeySource",
    "LoadConfig",
    "PriorityConfig",
    "QualityConfig",
    "SpeculativeConfig",
    "StrategiesConfig",
    "TenantConfig",
    "TieringConfig",
    "TracingConfig",
    "VerifierConfig",
    "key_digest",
    "load_profile",
    "profile_args",
    "profile_names",
    "profile_path",
    "profiles_dir",
]
