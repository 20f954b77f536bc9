"""Ctrl-C and SIGTERM end a run cleanly: at an epoch boundary, with a checkpoint.

The command installs ``on_signal`` for SIGINT and SIGTERM (Kubernetes and systemd send
the latter on stop). Outside the epoch loop a signal raises ``Interrupted`` at once.
Inside it (``deferred``) the signal is noted and the loop raises at the next epoch
boundary (``raise_if_pending``), where the loop's state is whole and can be saved; a
second signal does not wait. The command then exits 130 (SIGINT) or 143 (SIGTERM) with
one line, after closing the client and any cluster it started.
"""

from __future__ import annotations

import contextlib
import signal

_state = {"defer": 0, "pending": None}


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal; ``checkpoint_epoch``: where a rerun resumes."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.checkpoint_epoch: int | None = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def on_signal(signum, frame) -> None:
    if _state["defer"] and _state["pending"] is None:
        _state["pending"] = signum
        return
    _state["pending"] = None
    raise Interrupted(signum)


@contextlib.contextmanager
def installed():
    """Route SIGINT and SIGTERM to ``on_signal`` inside the block (main thread only),
    and give the caller's handlers back after it (``main`` runs inside tests too)."""
    before = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        _state["pending"] = None


@contextlib.contextmanager
def deferred():
    """Signals wait for ``raise_if_pending`` inside this block."""
    _state["defer"] += 1
    try:
        yield
    finally:
        _state["defer"] -= 1


def raise_if_pending(on_stop=None) -> None:
    """At a safe point: if a signal came, call ``on_stop()`` (which returns the epoch a
    rerun resumes from, or None) and raise ``Interrupted``."""
    signum = _state["pending"]
    if signum is None:
        return
    _state["pending"] = None
    err = Interrupted(signum)
    if on_stop is not None:
        err.checkpoint_epoch = on_stop()
    raise err
