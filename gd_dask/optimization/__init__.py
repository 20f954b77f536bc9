"""Optimization: the descent on the reduced sums (step rules, rates, momentum), its
certificates (what ``converged`` promises), refinement and stochastic descent."""
