"""Your own model (THEORY.md §1): a diagonal network given by its loss Lb(beta), or any torch module.

* :func:`from_loss` ``(loss_beta, p)``: a diagonal network known only through Lb. Definition 3.1 and Lemma 4.1
  hold by construction (the network *is* Lb(u * v)); every check that needs Lb runs on it.
* :func:`from_module` ``(module, pairs, loss)``: ``pairs`` lists ``(u_name, v_name)`` parameter names of
  ``module``. Vector pairs (equal shapes [m]) are diagonal weights: the trained quantity is u * v. Matrix
  pairs (U [a, r], V [b, r]) are full weights: the trained quantity is U V^T. With only vector pairs the
  result is a :class:`ModuleModel` (a :class:`DiagonalModel`, beta = the products in the order of ``pairs``);
  with a matrix pair it is a :class:`ModuleMatrixModel` (full weights: Lemma 4.1 as matrix balancedness and
  ``rank-increments``). Every other parameter of the module is frozen at its current value.

How the module is evaluated: ``torch.func.functional_call`` on the module itself (never a copy) with the pair
parameters replaced. ``loss_params(theta)`` substitutes (u, v) as given, so Definition 3.1 and Lemma 4.1 test
the network as the user wrote it (a module that uses ``q`` twice fails 3.1); ``loss_beta(beta)`` substitutes
u = beta and v = 1, which equals Lb(beta) exactly when the loss depends on (u, v) only through u * v.

What ``loss`` (and the module's forward) may do: any differentiable float64 torch computation of the module's
output on data the function holds. What it may not do, because derivatives are taken with ``torch.func``
(``grad``, ``vjp``) and batched with ``vmap``: in-place operations on the parameters, ``.item()``,
``.numpy()`` or Python ``if``/``while`` on tensor values (data-dependent control flow), or drawing random
numbers (the loss must be a deterministic function of the parameters). These are detected when the model is
built (a loss that cannot be batched raises ``InputError``). The module and its data stay on their device:
``to_device`` to another device raises (``--device auto`` keeps them where they are).
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch.func import functional_call, grad, vmap

from ..errors import InputError, UserCodeExit
from .base import DiagonalModel, Model

F64 = torch.float64


def _user_call(fn, *args):
    """``fn(*args)`` for a user's loss: a ``sys.exit`` in it is an error of the check evaluating it
    (:class:`UserCodeExit`), never the tool's exit code."""
    try:
        return fn(*args)
    except SystemExit as exc:
        raise UserCodeExit(f"the user's loss {getattr(fn, '__qualname__', fn)!s} called sys.exit({exc.code!r})") from None


class _LossOf(torch.nn.Module):
    """``forward()`` is ``loss(module)``: lets ``functional_call`` substitute the module's parameters while the
    user's loss calls the module however it likes. Holds a reference to the module, not a copy."""

    def __init__(self, module: torch.nn.Module, loss: Callable[[torch.nn.Module], torch.Tensor]):
        super().__init__()
        self.net = module
        self.loss_fn = loss

    def forward(self) -> torch.Tensor:
        return _user_call(self.loss_fn, self.net)


def _source(obj) -> dict:
    """Where ``obj`` (a class or function) is defined, and its source text when it can be read."""
    out = {"name": f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"}
    try:
        out["file"] = inspect.getsourcefile(obj) or "?"
        out["code"] = inspect.getsource(obj)
    except (OSError, TypeError):
        pass
    return out


@dataclass(frozen=True, eq=False)
class _Fixed:
    """Fields of user models: no data set of their own (X, Y None), a fixed device ``where`` (the loss holds its
    own tensors)."""

    X: torch.Tensor | None = None
    Y: torch.Tensor | None = None
    where: torch.device = torch.device("cpu")
    movable = False

    @property
    def device(self) -> torch.device:
        return self.where

    def to_device(self, device: str | torch.device):
        if torch.device(device) != torch.device(self.where):
            raise InputError("--device", f"this model's loss holds its own tensors on {self.where} and cannot be "
                                         f"moved to {device}", f"{torch.device(self.where).type}, auto "
                                         "(or build the model on the device you want)")
        return self


@dataclass(frozen=True, eq=False)
class LossModel(_Fixed, DiagonalModel):
    """A diagonal network given by Lb: ``fn(beta [p]) -> scalar``; theta = (u, v) and L(theta) = Lb(u * v)."""

    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    size: int = 0
    names: tuple[str, ...] = ()
    family = "from_loss"

    @property
    def p(self) -> int:
        return self.size

    def coordinate_names(self) -> list[str]:
        return list(self.names) if self.names else super().coordinate_names()

    def loss_beta(self, beta: torch.Tensor) -> torch.Tensor:
        return _user_call(self.fn, beta)

    def loss_params(self, theta: torch.Tensor) -> torch.Tensor:
        return _user_call(self.fn, theta[: self.p] * theta[self.p :])

    def source(self) -> dict:
        return {"kind": "from_loss", "p": self.p, "loss": _source(self.fn)}


@dataclass(frozen=True)
class Pair:
    """One trained product of ``from_module``: parameters ``u``, ``v`` (dotted names) of shapes [m] (vector:
    u * v) or [a, r] and [b, r] (matrix: U V^T)."""

    u: str
    v: str
    u_shape: tuple[int, ...]
    v_shape: tuple[int, ...]

    @property
    def matrix(self) -> bool:
        return len(self.u_shape) == 2

    @property
    def size(self) -> int:
        """Entries of u (and of v for a vector pair)."""
        return math.prod(self.u_shape)

    @property
    def label(self) -> str:
        return f"{self.u} {self.v}^T" if self.matrix else f"{self.u}*{self.v}"


def _pairs(module: torch.nn.Module, pairs) -> tuple[Pair, ...]:
    """Validate ``pairs`` against the module's parameters (names, shapes, float64, no parameter twice)."""
    params = dict(module.named_parameters())
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise InputError("pairs", f"{pairs!r} is not a non-empty list", "[(u_name, v_name), ...]")
    out, seen = [], set()
    for item in pairs:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(n, str) for n in item)):
            raise InputError("pairs", f"{item!r} is not a pair of parameter names", "(u_name, v_name)")
        for name in item:
            if name not in params:
                raise InputError("pairs", f"{type(module).__name__} has no parameter {name!r}",
                                 ", ".join(params) or "none")
            if name in seen:
                raise InputError("pairs", f"parameter {name!r} appears twice", "each parameter in at most one pair")
            seen.add(name)
        u, v = (params[n] for n in item)
        vector = u.dim() == 1 and u.shape == v.shape
        matrix = u.dim() == 2 and v.dim() == 2 and u.shape[1] == v.shape[1]
        if not (vector or matrix):
            raise InputError("pairs", f"{item[0]} {tuple(u.shape)} and {item[1]} {tuple(v.shape)} do not form a "
                                      "product", "vectors of equal shape [m], or matrices [a, r] and [b, r]")
        out.append(Pair(item[0], item[1], tuple(u.shape), tuple(v.shape)))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class _ModuleLoss(_Fixed):
    """Shared by both module models: ``wrapper`` (the user's module and loss), its ``pairs``, the ``frozen``
    parameters (detached), and functional_call on the module with the pairs substituted."""

    wrapper: _LossOf | None = None
    pairs: tuple[Pair, ...] = ()
    frozen: dict = field(default_factory=dict)

    def _call(self, subs: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(self.wrapper, {**self.frozen, **subs}, ())

    def _uv_params(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta = (every u flattened, then every v flattened), in the order of ``pairs``."""
        out, off = {}, 0
        for side in ("u", "v"):
            for pr in self.pairs:
                shape = pr.u_shape if side == "u" else pr.v_shape
                n = math.prod(shape)
                out[f"net.{getattr(pr, side)}"] = theta[off : off + n].reshape(shape)
                off += n
        return out

    def loss_params(self, theta: torch.Tensor) -> torch.Tensor:
        return self._call(self._uv_params(theta))

    def source(self) -> dict:
        return {"kind": "from_module", "module": _source(type(self.wrapper.net)),
                "pairs": [[p.u, p.v] for p in self.pairs], "products": [p.label for p in self.pairs],
                "loss": _source(self.wrapper.loss_fn), "frozen": sorted(k[4:] for k in self.frozen)}


@dataclass(frozen=True, eq=False)
class ModuleModel(_ModuleLoss, DiagonalModel):
    """A module whose trained weights are vector pairs (u, v): beta = (u_1 * v_1, u_2 * v_2, ...)."""

    family = "from_module"

    @property
    def p(self) -> int:
        return sum(pr.size for pr in self.pairs)

    def coordinate_names(self) -> list[str]:
        return [f"{pr.label}[{i}]" for pr in self.pairs for i in range(pr.size)]

    def coordinate_structure(self) -> list[tuple[str, str, int]]:
        """(group, pair, index) per coordinate: the group is the submodule holding u (``heads.0`` for
        ``heads.0.q``), so two submodules of the same form can be compared entry by entry."""
        out = []
        for pr in self.pairs:
            group, _, leaf_u = pr.u.rpartition(".")
            leaf_v = pr.v[len(group) + 1 :] if group and pr.v.startswith(group + ".") else pr.v
            out += [(group, f"{leaf_u}*{leaf_v}", i) for i in range(pr.size)]
        return out

    def loss_beta(self, beta: torch.Tensor) -> torch.Tensor:
        """Lb(beta): the module with u = beta and v = 1 for every pair."""
        subs, off = {}, 0
        for pr in self.pairs:
            subs[f"net.{pr.u}"] = beta[off : off + pr.size]
            subs[f"net.{pr.v}"] = torch.ones(pr.size, dtype=beta.dtype, device=beta.device)
            off += pr.size
        return self._call(subs)


@dataclass(frozen=True, eq=False)
class ModuleMatrixModel(_ModuleLoss, Model):
    """A module with at least one matrix pair (full weights, outside the theory): theta = (u's, v's)
    flattened; the products U V^T (diag(u * v) for a vector pair) are what ``rank-increments`` tracks."""

    family = "from_module-full"

    @property
    def n_params(self) -> int:
        return sum(math.prod(pr.u_shape) + math.prod(pr.v_shape) for pr in self.pairs)

    def _split(self, theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(U, V)] per pair, batched over theta's leading dimensions."""
        us, vs, off = [], [], 0
        lead = theta.shape[:-1]
        for side, out in (("u", us), ("v", vs)):
            for pr in self.pairs:
                shape = pr.u_shape if side == "u" else pr.v_shape
                n = math.prod(shape)
                out.append(theta[..., off : off + n].reshape(*lead, *shape))
                off += n
        return list(zip(us, vs))

    def products(self, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(U @ V.transpose(-1, -2) if pr.matrix else torch.diag_embed(U * V)
                     for pr, (U, V) in zip(self.pairs, self._split(theta)))

    def product_names(self) -> tuple[str, ...]:
        return tuple(pr.label for pr in self.pairs)

    # -- the factor pairs of the lifted flow (dynamics/pair_flow.py, THEORY.md §8) -------------------------
    @property
    def products_only(self) -> bool:
        """Whether the lifted flow may apply: every pair is a matrix pair (a vector pair u * v is not U V^T of
        one matrix pair). That the loss reads the pairs only through U V^T is measured, not assumed
        (``pair_flow.product_mismatch``)."""
        return all(pr.matrix for pr in self.pairs)

    @property
    def factor_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """(a, b, r) of every matrix pair U [a, r], V [b, r]."""
        return tuple((pr.u_shape[0], pr.v_shape[0], pr.u_shape[1]) for pr in self.pairs)

    def factors(self, theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self._split(theta)

    def join_factors(self, factors) -> torch.Tensor:
        """theta from [(U, V)] per pair (batched over leading dimensions): every U flattened, then every V."""
        return torch.cat([U.flatten(-2) for U, _ in factors] + [V.flatten(-2) for _, V in factors], dim=-1)

    def _balance(self, theta: torch.Tensor, sign: float) -> torch.Tensor:
        out = []
        for pr, (U, V) in zip(self.pairs, self._split(theta)):
            if pr.matrix:
                out.append((U.transpose(-1, -2) @ U + sign * (V.transpose(-1, -2) @ V)).flatten(-2))
            else:
                out.append(U * U + sign * V * V)
        return torch.cat(out, dim=-1)

    def conserved(self, theta: torch.Tensor) -> torch.Tensor:
        """Lemma 4.1: U^T U - V^T V per matrix pair (matrix balancedness), u^2 - v^2 per vector pair."""
        return self._balance(theta, -1.0)

    def conserved_scale(self, theta: torch.Tensor) -> torch.Tensor:
        return self._balance(theta.abs(), 1.0)

    def init_params(self, alpha: float, generator: torch.Generator) -> torch.Tensor:
        """alpha * theta0: matrix entries i.i.d. N(0, 1/a) for U [a, r] (N(0, 1/b) for V), vectors N(0, 1)."""
        parts = []
        for side in ("u", "v"):
            for pr in self.pairs:
                shape = pr.u_shape if side == "u" else pr.v_shape
                scale = shape[0] ** -0.5 if pr.matrix else 1.0
                parts.append(torch.randn(math.prod(shape), generator=generator, dtype=F64) * scale)
        return alpha * torch.cat(parts).to(self.device)


def _torch_device(device, field_name: str) -> torch.device:
    """``torch.device(device)``, or InputError naming the field (torch raises RuntimeError or TypeError)."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(field_name, f"{device!r} is not a device ({exc})", "cpu, cuda, cuda:N") from None


def _device_of(module: torch.nn.Module, device) -> torch.device:
    found = {t.device for t in list(module.parameters()) + list(module.buffers())}
    if any(d.type == "meta" for d in found):  # shapes without values: nothing to evaluate
        raise InputError("module", "its tensors are on the meta device (shapes without values)",
                         "a module with real weights: module.to_empty(device='cpu') and load them first")
    if device is not None:
        want = _torch_device(device, "device")
        if found and found != {want}:
            raise InputError("device", f"the module's tensors are on {sorted(map(str, found))}, not {want}",
                             "the device of the module's parameters")
        return want
    if len(found) > 1:
        raise InputError("module", f"parameters on several devices {sorted(map(str, found))}", "one device")
    return found.pop() if found else torch.device("cpu")


def from_module(module: torch.nn.Module, pairs: Sequence[tuple[str, str]],
                loss: Callable[[torch.nn.Module], torch.Tensor], *, device: str | torch.device | None = None):
    """A model from a torch module: ``pairs`` = [(u_name, v_name), ...] (see the module docstring),
    ``loss(module) -> scalar`` the user's loss on the user's data. Raises InputError naming the field."""
    if not isinstance(module, torch.nn.Module):
        raise InputError("module", f"{type(module).__name__} is not a torch.nn.Module", "an nn.Module")
    if not callable(loss):
        raise InputError("loss", f"{type(loss).__name__} is not callable", "a function loss(module) -> scalar")
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and t.dtype != F64:
            raise InputError("module", f"{name} is {t.dtype}", "float64 (call module.double())")
    pr = _pairs(module, pairs)
    where = _device_of(module, device)
    wrapper = _LossOf(module, loss)
    names = {f"net.{n}" for p in pr for n in (p.u, p.v)}
    frozen = {k: t.detach() for k, t in wrapper.named_parameters() if k not in names}
    cls = ModuleMatrixModel if any(p.matrix for p in pr) else ModuleModel
    model = cls(wrapper=wrapper, pairs=pr, frozen=frozen, where=where)
    validate(model, "loss")
    return model


def from_loss(loss_beta: Callable[[torch.Tensor], torch.Tensor], p: int, *, names: Sequence[str] | None = None,
              device: str | torch.device = "cpu") -> LossModel:
    """A diagonal model from ``loss_beta(beta [p]) -> scalar`` (float64, differentiable, vmap-able: see the
    module docstring). ``names``: one label per coordinate (default ``beta[i]``)."""
    if not callable(loss_beta):
        raise InputError("loss_beta", f"{type(loss_beta).__name__} is not callable", "a function beta -> scalar")
    if isinstance(p, bool) or not isinstance(p, numbers.Integral) or p < 1:  # True is an int to Python
        raise InputError("p", f"{p!r} is not a positive integer", "an int >= 1")
    p = int(p)
    if names is not None and (isinstance(names, (str, bytes)) or not isinstance(names, Iterable)):
        raise InputError("names", f"{names!r} is not a sequence of labels", f"{p} strings")
    names = tuple(str(n) for n in names) if names is not None else ()
    if names and len(names) != p:
        raise InputError("names", f"{len(names)} names for p = {p} coordinates", f"{p} names")
    where = _torch_device(device, "device")
    if where.type == "meta":
        raise InputError("device", "the meta device holds no values", "cpu, cuda")
    model = LossModel(fn=loss_beta, size=p, names=names, where=where)
    validate(model, "loss_beta")
    return model


def validate(model: Model, field_name: str) -> None:
    """The loss at the start (theta = 0.01 theta0, and beta = 0 for diagonal models) is a finite float64
    scalar, and its gradient can be batched with vmap; else InputError naming ``field_name``."""
    theta = model.init_params(1e-2, torch.Generator().manual_seed(0))
    probes = [("the loss at the start", lambda: model.loss_params(theta))]
    if model.diagonal:
        zero = torch.zeros(model.p, dtype=F64, device=model.device)
        probes.append(("Lb(0)", lambda: model.loss_beta(zero)))
    for what, evaluate in probes:
        try:
            value = evaluate()
        except Exception as exc:
            raise InputError(field_name, f"evaluating {what} raised {type(exc).__name__}: {exc}") from None
        if not (isinstance(value, torch.Tensor) and value.dim() == 0):
            raise InputError(field_name, f"{what} is {type(value).__name__} "
                                         f"{tuple(getattr(value, 'shape', ()))}", "a scalar torch tensor")
        if value.dtype != F64:
            raise InputError(field_name, f"{what} is {value.dtype}", "float64")
        if not bool(torch.isfinite(value)):
            raise InputError(field_name, f"{what} is {float(value)}", "a finite number")
    try:
        batch = torch.stack([theta, 0.5 * theta])
        g = vmap(grad(model.loss_params))(batch)
        if model.diagonal:
            g = torch.cat([g, model.grad_b(batch[:, : model.p] * batch[:, model.p :])], dim=1)
    except Exception as exc:
        raise InputError(field_name, f"its gradient cannot be batched with torch.func.vmap ({type(exc).__name__}: "
                                     f"{exc})", "no .item(), no Python control flow on tensor values, no in-place "
                                     "ops on parameters") from None
    if not bool(torch.isfinite(g).all()):
        raise InputError(field_name, "the gradient at the start is not finite", "a finite gradient")
    if not bool(g.any()):  # exactly zero: a constant loss (then the checks say so), or one cut off autograd
        a, b = model.loss_params(theta), model.loss_params(0.5 * theta)
        if bool(a != b):
            raise InputError(field_name, f"the loss changes with the weights ({float(a):.6g} at theta, {float(b):.6g} "
                                         "at theta / 2) but its gradient is exactly zero: it is cut off from autograd",
                             "a loss computed with torch operations on the weights (no .detach(), .item(), "
                             "torch.no_grad() or numpy)")
