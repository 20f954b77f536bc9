"""Newton's method on the one-hot design, its gradient summed in long double: the
reference the GLM certificates with categorical features are checked against
(test_categorical_two_way_glm, test_categorical)."""

import numpy as np
from scipy import sparse
from scipy.linalg import cho_factor, cho_solve


def newton_reference(X, columns, y, w, t, model, family):
    """Newton's method on the one-hot design of the rows not at separated levels (the
    references, pinned and separated levels dropped), its gradient summed in long
    double, its Hessian factored by dense Cholesky: (each coefficient in model order,
    the level names in that order, Fisher's information there, the scale). It starts
    from the model's coefficients, to save factorizations: where it ends is where its
    gradient is 0, wherever it starts (it moves the model's coefficients by their
    error, which the tests check)."""
    docs = model["categorical"]
    away = np.zeros(len(y), dtype=bool)
    for doc, values in zip(docs, columns):
        gone = {s["level"] for s in doc.get("separated", ())}
        away |= np.isin(values, list(gone))
    rows = ~away
    cols = [sparse.csr_matrix(np.column_stack([np.ones(rows.sum()), X[rows]]))]
    names = []
    for doc, values in zip(docs, columns):
        levels = [lv for lv in doc["levels"] if lv != doc["reference"] and lv not in doc.get("pinned", ())]
        pos = {lv: i for i, lv in enumerate(levels)}
        v = values[rows].tolist()
        at = [i for i, x in enumerate(v) if x in pos]
        cols.append(sparse.csr_matrix((np.ones(len(at)), (at, [pos[v[i]] for i in at])), shape=(len(v), len(levels))))
        names.append(levels)
    D = sparse.hstack(cols).tocsr()
    yy = y[rows]
    ww = np.ones(len(yy)) if w is None else w[rows]
    off = np.zeros(len(yy)) if t is None else np.log(t[rows]).astype(np.longdouble)
    beta = coefficients(model, names)
    Dc = D.tocoo()
    factor, last = None, np.inf
    for _ in range(40):
        eta = np.zeros(len(yy), dtype=np.longdouble) + off
        np.add.at(eta, Dc.row, Dc.data.astype(np.longdouble) * beta.astype(np.longdouble)[Dc.col])
        if family == "logistic":
            p = 1 / (1 + np.exp(-eta))
            psi, h = (p - yy) * ww, (p * (1 - p)) * ww
        elif family == "poisson":
            mu = np.exp(eta)
            psi, h = (mu - yy) * ww, mu * ww
        else:
            r = yy * np.exp(-eta)
            psi, h = (1 - r) * ww, r * ww
        g = np.zeros(D.shape[1], dtype=np.longdouble)
        np.add.at(g, Dc.col, Dc.data * psi[Dc.row])
        if factor is None or last > 1e-6:  # near the minimum the last Hessian will do (the chord method)
            factor = cho_factor((D.multiply(np.asarray(h, dtype=np.float64)[:, None]).T @ D).toarray())
        step = cho_solve(factor, np.asarray(g, dtype=np.float64))
        beta = beta - step
        size = np.max(np.abs(step)) / np.max(np.abs(beta))
        if size <= 1e-16 or size >= last / 2 and size < 1e-13:  # down to float64's rounding of β
            break
        last = size
    eta = D @ beta + np.asarray(off, dtype=np.float64)
    if family == "gamma":  # Fisher's weight 1, the scale Pearson's χ²/(n − k)
        mu = np.exp(eta)
        h, phi = ww, float(ww @ ((yy - mu) / mu) ** 2) / (len(yy) - D.shape[1])
    else:
        h, phi = (1 / (1 + np.exp(-eta)) / (1 + np.exp(eta)) if family == "logistic" else np.exp(eta)) * ww, 1.0
    return beta, names, (D.multiply(h[:, None]).T @ D).toarray(), phi


def coefficients(model, names):
    """model.json's coefficients in the reference's order [b, m..., each column's levels]."""
    out = [model["b"], *model["m"]]
    for doc, levels in zip(model["categorical"], names):
        table = dict(zip(doc["levels"], doc["coef"]))
        out += [table[lv] for lv in levels]
    return np.array(out)
