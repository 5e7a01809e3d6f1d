"""Ctrl-C (SIGINT) and SIGTERM end a run the way a crash does for ``--resume``, and say so.

Ray Tune's own SIGINT handler ends ``Tuner.fit`` quietly: it returns as if the search were done,
and on the way out it tells the searcher that the running trials completed, which closes their
Optuna trials so that a resumed run cannot report to them. Inside :class:`StopSignals`:

* SIGINT and SIGTERM are caught by this module (Tune's SIGINT handler is turned off with
  ``TUNE_DISABLE_SIGINT_HANDLER``); inside ``Tuner.fit`` the first one is passed on as SIGUSR1,
  Tune's other stop signal, so Tune saves its experiment state and stops; elsewhere (teacher
  training, a finetune) it raises :class:`KeyboardInterrupt` at once;
* :func:`stop_requested` tells the searcher to leave unfinished trials open in the study;
* the run then raises :class:`Interrupted`, which the CLI turns into exit 130 (SIGINT) or 143
  (SIGTERM) and a line saying how to resume;
* a second signal stops at once (as SIGKILL would; ``--resume`` still works).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_CAUGHT = (signal.SIGINT, signal.SIGTERM)
_received: int | None = None


class Interrupted(Exception):
    """A run stopped by SIGINT or SIGTERM; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def stop_requested() -> bool:
    """True once a stop signal arrived inside a :class:`StopSignals` block of this process."""
    return _received is not None


def _in_ray_worker() -> bool:
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    return ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """Catch SIGINT and SIGTERM for the duration of a run (main thread only; elsewhere a no-op).

    Example::

        with StopSignals() as stop:
            ...  # Tuner.fit(), training
        if stop.signum is not None:
            raise stop.interrupted("search", "gmpq search --resume runs/x")
    """

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._previous_env: str | None = None
        self._usr1_before_fit: object = None
        self._in_fit = False
        # Only a driver catches signals: in a Ray worker (an ablation drives its searches from
        # Ray tasks) they are Ray's, which ends its workers with them.
        self.active = threading.current_thread() is threading.main_thread() and not _in_ray_worker()

    @property
    def signum(self) -> int | None:
        return _received

    def __enter__(self) -> StopSignals:
        global _received
        _received = None
        if self.active:
            self._previous_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            for signum in _CAUGHT:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if not self.active:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._previous_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._previous_env

    def _handle(self, signum: int, frame) -> None:
        global _received
        if _received is not None:
            raise KeyboardInterrupt  # a second signal: stop now
        _received = signum
        usr1 = signal.getsignal(signal.SIGUSR1)
        if self._in_fit and callable(usr1) and usr1 is not self._usr1_before_fit:
            # Tune's stop handler is installed: Tune ends its loop and saves the experiment state.
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        raise KeyboardInterrupt

    def tune_fit(self, tuner):
        """``tuner.fit()``, stopped through Tune's own SIGUSR1 handler when a signal arrives.

        Tune leaves that handler installed when ``fit`` returns; it is put back as it was.
        """
        if not self.active:
            return tuner.fit()
        self._usr1_before_fit = signal.getsignal(signal.SIGUSR1)
        self._in_fit = True
        try:
            return tuner.fit()
        finally:
            self._in_fit = False
            signal.signal(signal.SIGUSR1, self._usr1_before_fit)

    def interrupted(self, what: str, resume_command: str) -> Interrupted:
        """The :class:`Interrupted` error to raise once the run has stopped."""
        signum = _received if _received is not None else signal.SIGINT
        return Interrupted(signum, f"{what} interrupted by {signal_name(signum)}; nothing was lost that a resume "
                                   f"cannot redo: continue with `{resume_command}`")
