"""verifier: numerical checks of "Transformers learn through gradual rank increase" (NeurIPS 2023).

Your own model: ``verifier.from_module(module, pairs, loss)`` or ``verifier.from_loss(loss_beta, p)``
(see :mod:`verifier.models.user`). They are loaded on first use, so ``import verifier`` stays light.
"""

__version__ = "0.1.0"
__all__ = ["from_loss", "from_module"]


def __getattr__(name: str):
    if name in __all__:
        from .models import user

        return getattr(user, name)
    raise AttributeError(f"module 'verifier' has no attribute {name!r}")
