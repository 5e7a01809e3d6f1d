"""Starting or joining Ray, with the checks that keep a run from hanging.

* ``--address host:port`` is tried with a plain TCP connection first (a few seconds), because
  ``ray.init`` retries an address where nothing listens for minutes;
* what one trial or worker asks for is compared with the largest node: a request no node can
  ever hold would wait forever in Ray's queue.
"""

from __future__ import annotations

import logging
import socket

import ray

from gmpq_ray.core.errors import UserInputError

CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`UserInputError` unless something accepts TCP connections at ``address``."""
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UserInputError(f"--address {address!r}: expected 'auto' or HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserInputError(f"--address {address}: no Ray cluster answers there ({reason} within {timeout_s:g} s); "
                             f"is the head node up (`ray start --head`) and the port open?") from None


def start_ray(address: str | None) -> bool:
    """Join the cluster at ``address``, or start an embedded local Ray; True if this call started it."""
    if ray.is_initialized():
        return False
    if address not in (None, "auto", "local"):
        check_reachable(address)
    if address is None:
        # The embedded Ray keeps token authentication on (README, "On a cluster"); Ray's notice of
        # it would be the only line before a one-line error.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        # No dashboard unless a user starts one; Ray keeps token authentication on.
        # Ray's INFO lines ("Started a local Ray instance.") only for a cluster the user named.
        ray.init(address=address, include_dashboard=False, log_to_driver=True,
                 logging_level=logging.WARNING if address is None else logging.INFO)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserInputError(f"--address {address}: cannot connect to a Ray cluster ({str(err).splitlines()[0][:200]})") from None
    return True


def largest_node() -> dict[str, float]:
    """The CPU and GPU count of the largest live node of the cluster Ray is connected to."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    return {kind: max((float(n.get(kind, 0)) for n in nodes), default=0.0) for kind in ("CPU", "GPU")}


def check_fits_a_node(need: dict[str, float], what: str, field: str) -> None:
    """Raise :class:`UserInputError` if ``need`` (``{"CPU": 3, "GPU": 0}``) fits on no node.

    Args:
        need: the resources of one unit Ray must place on one node (a trial, a worker).
        what: what asks for them, for the message (``each trial``).
        field: the setting to change, for the message (``resources.cpus_per_trial``).
    """
    largest = largest_node()
    short = {kind: amount for kind, amount in need.items() if amount > largest.get(kind, 0.0) + 1e-9}
    if short:
        asked = ", ".join(f"{amount:g} {kind}" for kind, amount in short.items())
        have = ", ".join(f"{largest.get(kind, 0.0):g} {kind}" for kind in short)
        raise UserInputError(f"{field}: {what} asks for {asked}, but the largest node of this Ray cluster has {have}; "
                             f"it would wait forever")
