"""The request analyzer: what each request is, how hard it is, and which path it should take.

`RequestAnalyzer.analyze(request)` returns a `RoutePlan` (profile, complexity, priority
class, strategy, predicted max_tokens), recorded as the ``analyzer`` stage of the route
trace. See docs/analyzer.md.
"""

from serving.analyzer.analyzer import AnalysisInput, Analyzer, RequestAnalyzer
from serving.analyzer.complexity import DEFAULT_ARTIFACT, ComplexityModel, feature_names, profile_features
from serving.analyzer.plan import RoutePlan, Strategy
from serving.analyzer.profile import (
    HFTokenCounter,
    RequestProfile,
    TokenCounter,
    profile_request,
    question_text,
)

__all__ = [
    "DEFAULT_ARTIFACT",
    "AnalysisInput",
    "Analyzer",
    "ComplexityModel",
    "HFTokenCounter",
    "RequestAnalyzer",
    "RequestProfile",
    "RoutePlan",
    "Strategy",
    "TokenCounter",
    "feature_names",
    "profile_features",
    "profile_request",
    "question_text",
]
