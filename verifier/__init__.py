"""verifier: numerical checks of "Transformers learn through gradual rank increase" (NeurIPS 2023)."""

__version__ = "0.1.0"
