"""The three diffusers classes a DDPM job uses, imported without the rest of diffusers.

Why this exists (issue 17, measured on the 2-core machine, diffusers 0.42): ``from diffusers import
UNet2DModel`` took 3.5–4.6 s after ``import torch``, and so did ``from diffusers.models.unets.unet_2d
import UNet2DModel``, because a submodule import first runs its packages' ``__init__``:
``diffusers.models.unets`` imports all eleven UNets, and ``diffusers.models.transformers`` (reached
through ``unet_2d_blocks``) some eighty transformer models, whose imports pull in ``peft`` (≈ 1 s, via
``diffusers.hooks``, whose ``__init__`` ``ModelMixin.to()`` also runs), ``transformers`` (≈ 0.5 s, via
``diffusers.quantizers``) and ``scipy``. A DDPM job needs none of them.

:func:`import_light` imports one diffusers module with two changes, both invisible to later users:

- the ``__init__`` of each of :data:`DEFERRED_PACKAGES` is deferred (:class:`DeferredPackage`): their
  submodules import as usual, and the first lookup of any other name on the package runs its real
  ``__init__`` in place, so ``from diffusers.models.unets import UNet2DConditionModel`` later in the
  same process works as before;
- while it runs, ``transformers`` reads as absent to imports that try it (``sys.modules`` holds None
  for it, Python's own marker for "not importable"), unless something has imported it already. The one
  such import on this path is ``diffusers.quantizers.pipe_quant_config``, which then keeps diffusers'
  own stand-in for transformers' quantisation-config mixin (used only by ``PipelineQuantizationConfig``,
  which we never use). A diffusers module that *requires* transformers would fail loudly here, not
  silently; diffusers' availability flags (``USE_PEFT_BACKEND``) are computed before, and are untouched.

The classes are diffusers' own (``UNet2DModel is diffusers.UNet2DModel``); nothing is reimplemented.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator

DEFERRED_PACKAGES = ("diffusers.models.unets", "diffusers.models.transformers", "diffusers.hooks")
HIDDEN = ("transformers",)
"""Top-level packages that read as absent while :func:`import_light` runs (if not yet imported)."""


class DeferredPackage(types.ModuleType):
    """A package whose ``__init__`` has not run: ``__path__`` is set, so its submodules import as usual,
    and the first lookup of a name the package does not hold yet runs the real ``__init__`` in place
    (the module becomes a plain module), then answers the lookup."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        self.__class__ = types.ModuleType
        self.__spec__.loader.exec_module(self)
        return getattr(self, name)


def defer_package(name: str) -> None:
    """Put package ``name`` in ``sys.modules`` as a :class:`DeferredPackage` (its parents are imported
    normally); nothing happens if it is imported already."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)
    module.__class__ = DeferredPackage
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


@contextlib.contextmanager
def hidden(names: tuple[str, ...]) -> Iterator[None]:
    """Within the block, ``import`` of each not-yet-imported top-level package in ``names`` raises
    ImportError; afterwards they import normally."""
    marked = [n for n in names if n not in sys.modules]
    for n in marked:
        sys.modules[n] = None
    try:
        yield
    finally:
        for n in marked:
            if sys.modules.get(n, 0) is None:
                del sys.modules[n]


def import_light(name: str) -> types.ModuleType:
    """Import the diffusers module ``name`` with :data:`DEFERRED_PACKAGES` deferred and :data:`HIDDEN`
    absent to its optional imports (see the module docstring)."""
    if name in sys.modules:
        return sys.modules[name]
    importlib.import_module("diffusers")  # its availability flags are computed with nothing hidden
    for package in DEFERRED_PACKAGES:
        defer_package(package)
    with hidden(HIDDEN):
        return importlib.import_module(name)


UNet2DModel = import_light("diffusers.models.unets.unet_2d").UNet2DModel
DDPMScheduler = import_light("diffusers.schedulers.scheduling_ddpm").DDPMScheduler
DDIMScheduler = import_light("diffusers.schedulers.scheduling_ddim").DDIMScheduler
