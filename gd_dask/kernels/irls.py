"""A Newton step of a GLM family as weighted least squares (IRLS), row by row: at the
model's linear predictor η each row weighs h = ℓ''(η) and its working response is
z = η − ψ/h (ψ = ℓ'(η)), so that the weighted least-squares fit of z on the same design
is the Newton step's end point. Grouped by level (``kernels.groups``), the rows then feed
the least-squares solvers unchanged (``optimization.two_way``). Plain NumPy; no dask.

Each row also carries what its gradient term h·(η − z) may be off by from the exact ψ at
the exact η (``IRLS_ROUNDINGS``·u of its magnitudes, ``newton.newton_rows``' ``size``, and
the rounding of z), as a column e/h, so that its group's Σh·(e/h) is Σe: the certificate
of the step (``jobs.categorical_irls``) carries it through H⁻¹ entry by entry.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .losses import Loss
from .newton import newton_rows

#: The precision a row's terms are computed in: η, ψ, ℓ'' and the working response, in
#: long double (x86: 64 bits of mantissa, 2¹¹ × float64's), so that the gradient the
#: grouped rows stand for is off by some u_L per row rather than u: the certificate
#: gathers a level's rounding over every level (``optimization.two_way``), and float64's
#: left 5e-11 on 2,300 × 2,100 levels, short of 1e-9 on a level near 0. (Where long
#: double is float64, as on arm64 macOS, the bound is float64's, counted as such.)
LONG = np.longdouble
U_ROW = float(np.finfo(LONG).eps) / 2
#: Roundings of a row's ψ against the loss's magnitudes and |ψ| (``newton.newton_rows``'
#: ``size`` at η of size 0): exp or log and the products and differences after it
#: (``certify.PSI_ROUNDINGS``), its weight, the quotient ψ/ĥ. η's own rounding (one per
#: term) counts twice more, against ĥ·Σ|terms of η|: in η, and in ψ moved by it; and
#: the difference η − ψ/ĥ once, against ĥ·|z|.
IRLS_ROUNDINGS = 16  # certify.PSI_ROUNDINGS (14) + 2


class IrlsRows(NamedTuple):
    """Rows for grouping, and what the certificate needs of them.

    block : (n, d + 4) [X, z, z_lo, e/h, h], rows of h > 0: the working
      response (less the offset) as z + z_lo exactly (its long double split in two
      float64), e a bound on what h·(η − z − z_lo) is off by from the exact ψ at the exact
      η, and h = ℓ''(η) rounded to float64 (the weight the rows are grouped by)
    total : Σ w·ℓ (the reported loss) at η
    xmax : (d,) max |x_j| over the rows of positive weight
    eta_max : max Σ|terms of η| over them (η's own rounding)
    lost : rows of positive weight and finite η whose h is 0 (η past where the loss's
      curvature underflows)
    bad_targets : (count, a few values) the loss refuses
    """

    block: np.ndarray
    total: float
    xmax: np.ndarray
    eta_max: float
    lost: int
    bad_targets: tuple


def irls_rows(X, y, w, b: float, coefs, offset, m, loss: Loss, separated: float = np.inf,
              information: bool = False, fast: bool = False) -> IrlsRows:
    """``IrlsRows`` of rows: X (n, d), y, w (None or the sample weights), b, ``coefs``
    each row's coefficient of its level, per column, ``offset`` each row's offset (None:
    none), m the slopes; ``separated``: |η| from which a row is at a separated level
    (``data.write.SEPARATED_ETA``). ``information``: the rows weigh Fisher's weight
    instead (a non-canonical family's summary), ``total`` is Pearson's χ², the other
    columns are not formed (0). ``fast``: η, ψ, h and z in float64, z_lo and e/h 0: a step
    far from the minimum, which is not certified (``jobs.categorical_irls``)."""
    n = len(y)
    row = np.float64 if fast else LONG
    fixed = X.astype(row) @ np.asarray(m, dtype=row) + row(b)
    size = np.abs(X) @ np.abs(m) + abs(b)
    for c in coefs:
        fixed += c
        size += np.abs(c)
    eta = fixed + offset if offset is not None else fixed.copy()
    if offset is not None:
        size += np.abs(offset)
    terms = X.shape[1] + 1 + len(coefs) + int(offset is not None)
    # A row at a separated level (a coefficient of ±∞) is predicted exactly: no loss, no
    # gradient, no curvature (``jobs.separation``).
    finite = np.abs(eta) < separated
    keep = finite if w is None else finite & (w > 0)
    eta_max = float(size[keep].max()) if keep.any() else 0.0
    xmax = np.abs(X[keep]).max(axis=0) if keep.any() else np.zeros(X.shape[1])
    w_k = None if w is None else w[finite]
    if information:
        return _information(X[keep], y[keep], None if w is None else w[keep], eta[keep], loss, xmax, eta_max)
    rows = newton_rows(y[finite], w_k, eta[finite], np.zeros(int(finite.sum()), dtype=row), loss)
    const = loss.constant_terms(y[finite])  # the reported loss's terms of y alone: the total is the whole loss
    total = float(rows.total) + (0.0 if const is None else float(const.sum() if w_k is None else w_k @ const))
    h = np.zeros(n)
    h[finite] = rows.h.astype(np.float64)  # size: w·(the loss's magnitudes) + |ψ|
    lost = int(np.count_nonzero(keep & ~(h > 0)))
    keep &= h > 0
    at = keep[finite]  # the kept rows among the finite ones
    h = h[keep]
    z = fixed[keep] - rows.psi[at] / h  # with the float64 weight itself: h·(η − z) is ψ
    if fast:
        zeros = np.zeros(len(z))
        return IrlsRows(np.column_stack([X[keep], z, zeros, zeros, h]), total, xmax, eta_max, lost, rows.bad_targets)
    z_hi = z.astype(np.float64)
    z_lo = (z - z_hi).astype(np.float64)  # exact: z less its float64 rounding has 11 bits
    err = (IRLS_ROUNDINGS * rows.size[at] + (2 * terms + 2) * h * size[keep] + h * np.abs(z)) * (U_ROW * 1.01)
    block = np.column_stack([X[keep], z_hi, z_lo, (err / h).astype(np.float64), h])
    return IrlsRows(block, total, xmax, eta_max, lost, rows.bad_targets)


def _information(X, y, w, eta, loss: Loss, xmax, eta_max: float) -> IrlsRows:
    """``irls_rows(..., information=True)`` of the kept rows: their Fisher weights and
    Pearson's χ² = Σ w·(y − μ)²/V(μ), in float64."""
    eta = eta.astype(np.float64)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        mu = loss.link.inverse(eta)
        chi = (y - mu) ** 2 / loss.variance(mu)
        h = loss.fisher(eta) * (1.0 if w is None else w)
    pearson = float(chi.sum() if w is None else w @ chi)
    zeros = np.zeros((len(y), 3))
    return IrlsRows(np.column_stack([X, y, zeros[:, :2], h]), pearson, xmax, eta_max, 0, (0, ()))
