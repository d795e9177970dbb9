"""The registry of engines: the one module that knows the implementations (TGI's ``get_model`` is the model).

The interface (:mod:`devstack.tgi.engine`) imports no implementation; the command line
(``python -m devstack.tgi --engine NAME``) and the in-process adapter (``workers.adapters.llm_engine``) build
engines by name here. Built-in engines are registered as factories that import their module only when called,
so listing the names loads neither torch nor FastAPI.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from devstack.tgi.engine import Engine

#: Builds an engine from the parsed command line of ``python -m devstack.tgi``.
EngineFactory = Callable[[argparse.Namespace], Engine]

_ENGINES: dict[str, EngineFactory] = {}


def register_engine(name: str, factory: EngineFactory) -> None:
    """Make an engine selectable with ``--engine name`` (a later registration of the same name replaces it).

    Args:
        name: The engine's name on the command line and in ``RAG_LLM__ENGINE``.
        factory: Builds the engine from the parsed options; it should not load a model (that is
            :meth:`Engine.start`'s job).
    """
    _ENGINES[name] = factory


def engine_names() -> list[str]:
    """Names accepted by ``--engine``, sorted."""
    return sorted(_ENGINES)


def create_engine(name: str, args: argparse.Namespace) -> Engine:
    """Build (without starting) the engine called ``name``.

    Args:
        name: A registered engine name.
        args: Options parsed with ``devstack.tgi.__main__.build_parser()``.

    Returns:
        The engine, not yet started.

    Raises:
        ValueError: no engine has that name, or the factory rejects the options.
    """
    try:
        factory = _ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {engine_names()}") from None
    return factory(args)


def _transformers(args: argparse.Namespace) -> Engine:
    from devstack.tgi.transformers_engine import TransformersEngine

    return TransformersEngine.from_args(args)


def _simulated(args: argparse.Namespace) -> Engine:
    from devstack.tgi.simulated_engine import SimulatedEngine

    return SimulatedEngine.from_args(args)


register_engine("transformers", _transformers)
register_engine("simulated", _simulated)
