"""The one policy interface: what the in-process runtime, the ZMQ client and the simulated server offer.

Modelled on openpi's ``BasePolicy``: a policy is something with ``infer``; behaviour (the chunk
executor, the safety filter) wraps it rather than being built into it. ``infer`` is batched and
blocking::

    replies = policy.infer([obs_a, obs_b], mode="sample", temperature=1.6, return_tokens=True, seeds=[1, 2])
    replies[0]["actions"]      # float32 [H, D], unnormalised joint targets
    replies[0]["tokens"]       # int64 [H*D] with return_tokens (discrete head), else None
    replies[0]["logprobs"]     # float32 [H*D] with return_tokens (discrete head), else None
    replies[0]["version"]      # the weights version that computed this chunk

A policy that can also answer without blocking (the ZMQ client, the simulated server) is an
:class:`AsyncPolicy`: ``submit`` one observation, ``poll`` its id until the reply is in, ``cancel``
what is no longer wanted. The control loop uses that form when it is there, so a slow policy never
stalls a tick.

Imports nothing beyond the standard library: both ends (robot client, server) may import it.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

__all__ = ["Policy", "AsyncPolicy", "DEFAULT_TEMPERATURE", "MODES", "check_infer_args"]

MODES = ("greedy", "sample")
DEFAULT_TEMPERATURE = 1.6  # what temperature=None means for mode "sample"


@runtime_checkable
class Policy(Protocol):
    """Batched, blocking inference: one reply per observation, in order."""

    def infer(
        self,
        observations: Sequence[dict],
        *,
        mode: str = "greedy",
        temperature: float | None = None,
        return_tokens: bool = False,
        seeds: Sequence[int | None] | None = None,
    ) -> list[dict]:
        """``seeds``: ``None`` or one ``int | None`` per observation; with ``mode="sample"`` the same
        seed (weights and observation) gives the same chunk, whatever else is in the batch."""
        ...


@runtime_checkable
class AsyncPolicy(Policy, Protocol):
    """A :class:`Policy` that can also be asked without waiting (one observation per request)."""

    def submit(self, observation: dict, **options: Any) -> Any:
        """Send one request (options: mode, temperature, return_tokens, seed); returns its id. Never blocks."""
        ...

    def poll(self, request_id: Any) -> dict | None:
        """The reply to ``request_id`` once it is in, else ``None``. Never blocks."""
        ...

    def cancel(self, request_id: Any) -> None:
        """Forget a request; a reply that still comes is dropped."""
        ...


def check_infer_args(observations: Any, seeds: Any, mode: str) -> list[dict]:
    """The checks every ``infer`` makes before doing any work; returns the observations as a list.

    Raises ``ValueError`` saying what was wrong and what was expected."""
    if isinstance(observations, Mapping) or not isinstance(observations, Sequence) or isinstance(observations, (str, bytes)):
        raise ValueError(
            f"observations must be a list of observation dicts (one per chunk wanted), got {type(observations).__name__}"
            + ("; wrap a single observation in a list: infer([obs])" if isinstance(observations, Mapping) else "")
        )
    observations = list(observations)
    for i, obs in enumerate(observations):
        if not isinstance(obs, Mapping):
            raise ValueError(f"observations[{i}] must be a dict with images, state, instruction; got {type(obs).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    if seeds is not None:
        if isinstance(seeds, (int, str, bytes)) or not isinstance(seeds, Sequence):
            raise ValueError(f"seeds must be None or a list of one int|None per observation, got {type(seeds).__name__}")
        if len(seeds) != len(observations):
            raise ValueError(f"seeds: one per observation expected, got {len(seeds)} for {len(observations)} observations")
        for i, s in enumerate(seeds):
            if s is not None and (isinstance(s, bool) or not isinstance(s, int) and not hasattr(s, "__index__")):
                raise ValueError(f"seeds[{i}] must be an int or None, got {s!r}")
    return observations
