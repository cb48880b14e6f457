# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp registry

# %% [markdown]
# # Registry: families and objectives register themselves
#
# > Where a backbone family or a pretraining objective is found by name; this module imports neither.
#
# A backbone *family* (how a library's models are built and loaded: timm and open_clip in
# 07_backbones, the self-supervised checkpoints of 15_pretrain) and a pretraining *objective*
# (15_pretrain) register themselves here, from their own modules, as timm's models register with
# `register_model`. So imports point down: `backbones` never imports `pretrain`; an `ssl:`
# backbone finds its loader through this registry, which imports the module that provides it
# (`PROVIDERS`, a table of module names) the first time it is asked for, so a process that never
# loads an `ssl:` backbone never imports pretraining code, and a notebook that never does is not
# made stale by an edit to it (17_notebooks).

# %%
#| export
import importlib

FAMILIES: dict = {}     # backbone library -> loader(spec, weights, hub_cache) -> (spec, model, transform, preprocess, paths)
OBJECTIVES: dict = {}   # pretraining objective -> its model class (15_pretrain)
PROVIDERS = {"ssl": "derma_jepa.pretrain"}      # a family registered by a module nothing imports: imported on first use


def register_family(name: str):
    "Decorator: `loader` is how backbones of library `name` are built."
    def deco(loader): FAMILIES[name] = loader; return loader
    return deco


def register_objective(name: str):
    "Decorator: `cls` is the model of pretraining objective `name`."
    def deco(cls): OBJECTIVES[name] = cls; return cls
    return deco


def family(name: str):
    "The loader of backbone library `name`, importing the module that provides it when it is not registered yet."
    if name not in FAMILIES and name in PROVIDERS: importlib.import_module(PROVIDERS[name])
    if name not in FAMILIES: raise KeyError(f"no backbone family {name!r} is registered (registered: {', '.join(FAMILIES)})")
    return FAMILIES[name]


# %%
from fastcore.test import test_eq, test_fail
import subprocess, sys


# %% [markdown]
# A family registered under a name is what `family` returns; an unknown one is refused with the
# names that are registered. `ssl` is provided by `derma_jepa.pretrain`: in a fresh process,
# asking for it imports that module, which registers it and its objectives on import.

# %%
@register_family("toy")
def _toy(spec, weights, hub_cache): return spec, None, None, {}, None
test_eq(family("toy"), _toy)
test_fail(lambda: family("tensorflow"), contains="no backbone family 'tensorflow' is registered")
_probe = ("import sys; from derma_jepa.registry import OBJECTIVES, family; print('derma_jepa.pretrain' in sys.modules, end=' '); "
          "f = family('ssl'); print('derma_jepa.pretrain' in sys.modules, f.__module__, ','.join(OBJECTIVES))")
_out = subprocess.run([sys.executable, "-c", _probe], capture_output=True, text=True, check=True).stdout.split()
test_eq(_out[:3], ["False", "True", "derma_jepa.pretrain"])
assert {"mae", "simclr"} <= set(_out[3].split(",")), _out      # pretrain's objectives, registered by that import (15_pretrain lists them)

# %% [markdown]
# What registers itself, once the modules that provide it are imported (in a fresh process, so this
# notebook's own toy family is not among them):

# %%
import json
import pandas as pd
_who = ("import json; import derma_jepa.backbones, derma_jepa.pretrain; from derma_jepa.registry import FAMILIES, OBJECTIVES; "
        "print(json.dumps([['family', n, f.__module__] for n, f in FAMILIES.items()] + "
        "[['objective', n, c.__module__ + '.' + c.__name__] for n, c in OBJECTIVES.items()]))")
pd.DataFrame(json.loads(subprocess.run([sys.executable, "-c", _who], capture_output=True, text=True, check=True).stdout),
             columns=["kind", "name", "registered by"])
