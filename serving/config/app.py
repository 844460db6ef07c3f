"""The root of the configuration tree, and how a profile file becomes one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from serving.config.analyzer import AnalyzerConfig
from serving.config.api import ApiConfig
from serving.config.auth import AuthConfig
from serving.config.cache import CacheConfig
from serving.config.engine import EngineConfig
from serving.config.load import LoadConfig
from serving.config.priority import PriorityConfig
from serving.config.quality import QualityConfig
from serving.config.strategies import StrategiesConfig
from serving.config.tiering import TieringConfig
from serving.config.tracing import TracingConfig

ENV_PREFIX = "INFOPT_"


def default_cache_dir() -> Path:
    """Where prepared models and other state live unless configured otherwise."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "inference-optimizer"


class AppConfig(BaseSettings):
    """Everything `build_app(args)` needs, validated once.

    Values come from the profile YAML (the `args` of the Serve application) and are
    overridden by environment variables: `INFOPT_<FIELD>`, nested with `__`, e.g.
    `INFOPT_TIERING__THRESHOLD=0.7` or `INFOPT_VALIDATOR__MAX_MODEL_LEN=4096`.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", nested_model_default_partial_update=True
    )

    profile: str = Field("custom", description="Name of the profile this configuration came from.")
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Folder of prepared models and local state (env INFOPT_CACHE_DIR).",
    )
    scout: EngineConfig = Field(description="The small model that answers first.")
    validator: EngineConfig = Field(description="The large model that answers what the Scout is unsure of.")
    tiering: TieringConfig = Field(default_factory=TieringConfig, description="Scout -> Validator decision.")
    quality: QualityConfig = Field(
        default_factory=QualityConfig, description="The quality guarantee: calibration, allowed risk, live audit.")
    api: ApiConfig = Field(default_factory=ApiConfig, description="Limits of the OpenAI-compatible ingress.")
    cache: CacheConfig = Field(default_factory=CacheConfig, description="The semantic cache in front of the tiers.")
    analyzer: AnalyzerConfig = Field(
        default_factory=AnalyzerConfig, description="Request analysis: complexity and strategy of each request."
    )
    priority: PriorityConfig = Field(
        default_factory=PriorityConfig, description="Priority classes and tenancy: which class a request belongs to."
    )
    auth: AuthConfig = Field(
        default_factory=AuthConfig, description="API keys and tenants: namespaces, priority classes, rate limits, "
        "budgets, admin keys (none: the service runs open).")
    load: LoadConfig = Field(
        default_factory=LoadConfig,
        description="Load prediction: arrival forecast, the Validator's cascade autoscaling, adaptive batching.",
    )
    strategies: StrategiesConfig = Field(
        default_factory=StrategiesConfig,
        description="Inference strategies (n candidates voted on, scored or searched) and their budgets.",
    )
    tracing: TracingConfig = Field(
        default_factory=TracingConfig,
        description="OpenTelemetry traces over OTLP: a span per request and per stage with its decision (off).",
    )

    @model_validator(mode="after")
    def _cores_not_shared(self) -> AppConfig:
        s, v = self.scout.cpu_threads_bind, self.validator.cpu_threads_bind
        if self.scout.device == self.validator.device == "cpu" and s is not None and s == v:
            raise ValueError(
                f"scout and validator are both bound to cores '{s}': give each engine its own cores"
            )
        return self

    @model_validator(mode="after")
    def _tenant_classes(self) -> AppConfig:
        unknown = {name: t.priority for name, t in self.auth.tenants.items()
                   if t.priority is not None and t.priority not in self.priority.classes}
        if unknown:
            raise ValueError(f"auth.tenants name unknown priority classes {unknown} "
                             f"(known: {sorted(self.priority.classes)})")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the profile file so that one YAML serves many machines.
        return env_settings, init_settings

    def cache_store_path(self) -> Path:
        """The folder of the embedded cache store: `cache.path`, or `<cache_dir>/semantic-cache/<profile>`."""
        return self.cache.path or self.cache_dir / "semantic-cache" / self.profile

    def calibration_path(self) -> Path | None:
        """`quality.calibration`, a relative path read from the profiles' folder (cluster/)."""
        path = self.quality.calibration
        return None if path is None else self.resolve_path(path)

    @staticmethod
    def resolve_path(path: Path) -> Path:
        """A file a profile names (a calibration, a frontier): a relative path is read from the profiles' folder."""
        return path if path.is_absolute() else profiles_dir() / path

    @property
    def needs_embedder(self) -> bool:
        """Whether the Embedder deployment runs: the cache and the analyzer both embed questions."""
        return self.cache.enabled or self.analyzer.enabled

    def draft_model(self, engine: EngineConfig) -> str:
        """The model `engine` speculates with under `draft_model`: the one it names, else the Scout's
        (the laptop pair shares a tokenizer; other pairs need `heterogeneous_vocab`)."""
        return engine.speculative.draft_model or self.scout.model

    def resolve_model(self, model: str) -> str:
        """Return what vLLM should load for `model` (see `serving.models.resolve`)."""
        from serving.models import resolve

        return resolve(model, self.cache_dir)


def profiles_dir() -> Path:
    """The `cluster/` folder holding one Serve config per profile."""
    env = os.environ.get(ENV_PREFIX + "PROFILES_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "cluster"


def profile_names() -> list[str]:
    """Profiles: the Serve configs in `cluster/` (files with `applications`; launcher configs such as
    `onprem.yaml` live there too and are not profiles)."""
    names = []
    for path in sorted(profiles_dir().glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and "applications" in doc:
            names.append(path.stem)
    return names


def profile_path(profile: str) -> Path:
    """A profile name (`tiny`) or a path to a Serve config YAML."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    path = profiles_dir() / f"{profile}.yaml"
    if not path.exists():
        known = profile_names()
        raise FileNotFoundError(f"no profile '{profile}' (known: {', '.join(known)})")
    return path


def profile_args(profile: str) -> dict[str, Any]:
    """The `args` of the application in a profile's Serve config."""
    path = profile_path(profile)
    doc = yaml.safe_load(path.read_text())
    apps = doc.get("applications") or []
    if len(apps) != 1 or "args" not in apps[0]:
        raise ValueError(f"{path}: expected exactly one application with 'args'")
    return dict(apps[0]["args"])


def load_profile(profile: str) -> AppConfig:
    """Validate a profile's configuration, with environment overrides applied."""
    return AppConfig(**profile_args(profile))
