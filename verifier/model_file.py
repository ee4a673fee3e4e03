"""``--model-file PATH.py:FACTORY``: import a user's file and call ``FACTORY()``, which returns a model
(``verifier.from_module``, ``verifier.from_loss`` or a built-in one). A factory with a parameter named
``seed`` is called ``FACTORY(seed=S)`` with the run's ``--seed``, so that S draws its data and teacher as it does
for a preset (``verifier survey --model-file`` needs one). Every way this can go wrong is an InputError naming
``--model-file`` (CLI exit 2), raised before any check runs.

The user's code (the import and the factory call) runs inside :func:`user_code`: an exception, a ``SystemExit``
(``sys.exit(0)`` must never become the tool's exit 0) or a change of the working directory (restored) becomes a
:class:`~verifier.errors.UserCodeError` naming the file, the function and the seed; Ctrl-C stays an interrupt."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path

import torch

from .errors import InputError, UserCodeError
from .paths import check_name

FIELD = "--model-file"


def parse_spec(spec: str) -> tuple[Path, str]:
    """'path/to/file.py:make' -> (Path, 'make'); the file must exist."""
    path, sep, factory = str(spec).rpartition(":")
    if not sep or not path or not factory.isidentifier():
        raise InputError(FIELD, f"{spec!r} is not PATH.py:FACTORY", "e.g. examples/attention_head.py:make")
    check_name(path, FIELD)
    file = Path(path)
    if file.suffix != ".py":
        raise InputError(FIELD, f"{path!r} is not a .py file", "PATH.py:FACTORY")
    if not file.is_file():
        raise InputError(FIELD, f"file not found: {path}")
    return file, factory


@contextlib.contextmanager
def user_code(file, function: str | None, seed: int | None = None):
    """Run user code: anything it raises (``SystemExit`` included, ``KeyboardInterrupt`` excepted) and a
    changed working directory (put back first) become a :class:`UserCodeError`."""
    cwd = os.getcwd()
    try:
        yield
    except KeyboardInterrupt:
        raise
    except UserCodeError:
        raise
    except InputError as exc:  # verifier's own builders refused what the user code gave them
        raise UserCodeError(str(file), function, f"built an invalid model: {exc}", seed) from None
    except SystemExit as exc:
        raise UserCodeError(str(file), function, f"called sys.exit({exc.code!r})", seed) from None
    except BaseException as exc:
        raise UserCodeError(str(file), function, f"raised {type(exc).__name__}: {exc}", seed) from None
    finally:
        try:
            now = os.getcwd()
        except OSError:  # the folder it moved to was removed
            now = None
        if now != cwd:
            os.chdir(cwd)
            raise UserCodeError(str(file), function, f"changed the working directory to {now} (put back to {cwd}; "
                                "paths in a model file are best made absolute, e.g. from __file__)", seed)


def takes_seed(make) -> bool:
    try:
        return "seed" in inspect.signature(make).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False


def load_factory(spec: str):
    """Import the file (as a fresh module, its folder first on sys.path while importing) and return
    ``(file, factory name, factory)``."""
    file, factory = parse_spec(spec)
    name = f"verifier_model_file.{file.stem}"  # never a real module's name; classes read as <stem>.<Class>
    module_spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so that inspect finds the source of its classes (the report shows it)
    folder = str(file.resolve().parent)
    sys.path.insert(0, folder)
    try:
        with user_code(file, None):
            module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        with contextlib.suppress(ValueError):  # the module may have edited sys.path itself
            sys.path.remove(folder)
    make = getattr(module, factory, None)
    if not callable(make):
        raise InputError(FIELD, f"{file} has no function {factory!r}",
                         ", ".join(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                                   and getattr(v, "__module__", None) == name) or "none")
    return file, factory, make


def load_model_file(spec: str, seed: int | None = None):
    """Call the file's factory (with ``seed=seed`` if it takes a seed) and validate what it returns (a Model
    with float64 tensors and a finite loss at the start)."""
    from .models import Model
    from .models.user import validate

    file, factory, make = load_factory(spec)
    seeded = seed is not None and takes_seed(make)
    with user_code(file, factory, seed if seeded else None):
        model = make(seed=seed) if seeded else make()
    if not isinstance(model, Model):
        raise InputError(FIELD, f"{file}:{factory}() returned {type(model).__name__}",
                         "a model: verifier.from_module(...), verifier.from_loss(...) or a verifier.models class")
    for attr, value in vars(model).items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
            raise InputError(FIELD, f"{file}:{factory}() returned a model whose {attr} is {value.dtype}", "float64")
    try:
        validate(model, FIELD)
    except InputError as exc:
        raise InputError(FIELD, f"{file}:{factory}(): {str(exc).removeprefix(FIELD + ': ')}") from None
    return model
