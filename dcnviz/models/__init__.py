"""Model registry and loading (timm style): ``list_models()``, ``load_model(name, weights=...)``.

Importing this package registers the six official networks (:mod:`dcnviz.models.official`); building a
network imports torch modules and the compiled ops only when a factory runs.
"""
from dcnviz.models import official  # noqa: F401  (registers the official models)
from dcnviz.models.loading import default_weights_path, load_model, weights_home
from dcnviz.models.registry import ModelSpec, get_spec, list_models, register_model

__all__ = ["ModelSpec", "get_spec", "list_models", "register_model", "load_model", "default_weights_path",
           "weights_home"]
