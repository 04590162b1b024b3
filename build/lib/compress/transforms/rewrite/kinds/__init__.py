"""The built-in rewrite kinds, one module each; importing a module registers its kind."""
from . import bottleneck, dilated, grouped, separable, shuffle  # noqa: F401

__all__: list[str] = []
