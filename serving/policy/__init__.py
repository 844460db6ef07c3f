"""The policies of the request path, one module each: read these to know why a request went where it went.

* `serving.policy.escalation` — Scout or Validator: tiers per route, skipping the Scout,
  the confidence threshold and its override, verification of drafts.
* `serving.policy.cache` — the cache: deterministic requests, the compared question,
  skipping, TTL limits, which candidate is served (thresholds and guards), admission.
"""
