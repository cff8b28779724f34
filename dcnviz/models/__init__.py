"""Model registry and loading (timm style): ``list_models()``, ``load_model(name, weights=...)``.

Importing this package registers the six official networks (:mod:`dcnviz.models.official`) and dcnviz's
four bundled ones (:mod:`dcnviz.models.synth`); building a
network imports torch modules and the compiled ops only when a factory runs.
"""
from dcnviz.models import official, synth  # noqa: F401  (registers the official and the bundled models)
from dcnviz.models.loading import convert_file, default_weights_path, expected_weights_path, load_model, weights_home
from dcnviz.models.registry import ModelSpec, get_spec, list_models, register_model

__all__ = ["ModelSpec", "get_spec", "list_models", "register_model", "load_model", "convert_file", "default_weights_path",
           "expected_weights_path", "weights_home"]
