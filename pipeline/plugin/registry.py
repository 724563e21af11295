"""Competition plugins by name: a registry filled by `@register`, and the lookup that lists the valid names.

Plugins are the modules of the `competitions` package, found like the CLI's commands (every module is
imported; those that define a plugin register it with `@register`). The contract is checked, not only
documented (pipeline/plugin/contract.py): the class when it registers, its item tables when a run lists them.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

from pipeline.errors import UserError
from pipeline.plugin.api import Competition
from pipeline.plugin.contract import check_flips, check_plugin_class

_REGISTRY: dict[str, type[Competition]] = {}


def register(cls: type[Competition]) -> type[Competition]:
    """Class decorator: check the plugin class against the contract, then make it available under `cls.name`."""
    check_plugin_class(cls)
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise UserError(f"two competition plugins are named {cls.name!r}: {_REGISTRY[cls.name]} and {cls}; rename one")
    _REGISTRY[cls.name] = cls
    return cls


def list_competitions() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def get_competition(name: str, metric: str | None = None, options: dict[str, str] | None = None) -> Competition:
    """The plugin called `name`, with plugin-specific `options` (keyword arguments of its constructor).

    An unknown name lists the valid ones; an unknown option lists the plugin's options."""
    _load_plugins()
    if name not in _REGISTRY:
        raise UserError(f"unknown competition {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    plugin = _REGISTRY[name]
    accepted = [p for p in inspect.signature(plugin.__init__).parameters if p not in ("self", "metric")]
    unknown = sorted(set(options or {}) - set(accepted))
    if unknown:
        raise UserError(f"{name} has no option {', '.join(unknown)}; its options: {', '.join(accepted) or 'none'}")
    competition = plugin(metric=metric, **(options or {}))
    check_flips(competition.flips, f"plugin {name!r}")  # a plugin option may set it per instance
    return competition


def _load_plugins() -> None:
    """Import every module of the `competitions` package once (as the CLI finds its commands): a module that
    defines a plugin registers it; helper modules (single_label) and subpackages (samples) register nothing.
    A concrete Competition subclass that a module defines but does not register is refused: it would
    silently be missing from every list and test."""
    import competitions

    for module in sorted(m.name for m in pkgutil.iter_modules(competitions.__path__) if not m.ispkg):
        loaded = importlib.import_module(f"competitions.{module}")
        for _, cls in inspect.getmembers(loaded, inspect.isclass):
            if (issubclass(cls, Competition) and cls.__module__ == loaded.__name__ and not inspect.isabstract(cls)
                    and _REGISTRY.get(getattr(cls, "name", None)) is not cls):
                raise UserError(f"{loaded.__name__}.{cls.__name__} is a Competition plugin that is not registered; "
                                "decorate it with @register (from pipeline.plugin.registry)")
