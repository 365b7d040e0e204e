"""bae's version, in a leaf module: the library records it (manifests, bundles, spans, ``/version``)
without importing the package facade, which sits above every layer (tests/test_architecture.py).
``pyproject.toml`` reads it from here; ``bae.__version__`` re-exports it."""

__version__ = "0.1.0"
