"""How the epochs reach the data: one choice, made once (``Strategy.of``), asked by
what it decides rather than compared as text.

- ``gram``: one pass for the moments, then every epoch from the Gram matrix: squared
  loss, full-batch descent, at most ``GRAM_MAX_FEATURES`` features (a k × k matrix).
- ``stream``: a pass over the data per epoch (any loss; minibatch SGD too).
- ``newton``: a pass per Newton step, gradient and Hessian together (``optimization.newton``):
  the self-concordant families (logistic, Poisson, Gamma, Tweedie), full-batch, no l1.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Largest number of features for which ``strategy: auto`` picks gram.
GRAM_MAX_FEATURES = 4096


@dataclass(frozen=True)
class Strategy:
    name: str  # "gram" | "stream": what model.json and the log lines say

    @classmethod
    def of(cls, asked: str, loss, method: str, n_features: int, descent_asked: bool = False) -> Strategy:
        """``optimizer.strategy`` (``asked``), with ``auto`` resolved: gram where the loss
        is quadratic, descent is full-batch and the features are few enough; newton for a
        self-concordant family, full-batch, at most as many features, unless the config
        asks for descent (``descent_asked``: a learning rate, l1, early stopping)."""
        if asked != "auto":
            return cls(asked)
        few = method == "batch" and n_features <= GRAM_MAX_FEATURES
        if loss.quadratic:
            return GRAM if few else STREAM
        if loss.self_concordant and few and not descent_asked:
            return NEWTON
        return STREAM

    @property
    def gram(self) -> bool:
        """The epochs run on the moments: one pass over the data for all of them."""
        return self.name == "gram"

    @property
    def stream(self) -> bool:
        """Every epoch is a pass over the data."""
        return self.name == "stream"

    @property
    def newton(self) -> bool:
        """Every pass is a Newton step."""
        return self.name == "newton"

    def __str__(self) -> str:
        return self.name


GRAM = Strategy("gram")
STREAM = Strategy("stream")
NEWTON = Strategy("newton")
