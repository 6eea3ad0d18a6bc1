"""Participant-side secure aggregation: sealed updates, X25519 key agreement, masking.

The protocol has two phases, so that a cohort can be any set of updates the schedule
decides to aggregate (a sync round, a FedBuff buffer filled by whoever finished first):

1. *Train and seal.* A task asked for secure aggregation trains as usual but keeps the
   update inside the actor and returns only a receipt (an empty payload, the metrics and
   whether the update was finite).
2. *Mask.* When the driver aggregates, it names the cohort (the participants whose
   receipts are in the batch), relays their public keys, and tells each member which of
   its sealed tasks to include and with what staleness weight. Every pair derives the
   same 32-byte seed from their Diffie-Hellman secret with HKDF (salted by the cohort id,
   so masks never repeat), the seed expands to the pairwise mask
   (``strategies/secure_aggregation.py``), and the member sends
   ``encode(sum_t [w_t n d_t, n]) + sum(+-masks)``. The driver learns neither a delta
   nor an example count, only the cohort's totals. Under DP-FedAvg each delta is clipped
   first and counts once, ``[w_t clip(d_t), 1]``: the driver cannot clip what it cannot
   read.

Masking calls run in their own actor concurrency group (:data:`SECAGG_GROUP`), so under
FedBuff they never wait behind the participant's next training task.

Threat model: an honest-but-curious driver. Without Bonawitz et al.'s second (self) mask
and secret-shared keys, a driver that lies about who dropped out could have survivors
reveal every mask of one participant; that variant is not implemented.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from strategies.secure_aggregation import apply_masks, encode, expand_mask, mask_sign

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

SECAGG_GROUP = "secagg"
"""Actor concurrency group of the key and masking calls (one thread beside training)."""

SEALED_METRIC = "sealed"
"""Receipt metric: 1.0 when the update is held for masking, 0.0 when it was refused."""

MAX_SEALED = 32
"""Sealed updates a participant keeps at most, so memory stays bounded when its updates
keep being turned away (late, rejected); the driver never buffers more than this many
from one participant."""


class MaskingKey:
    """One participant's X25519 key pair, drawn when first used: every participant holds
    one, and only those of a run with secure aggregation pay for importing cryptography."""

    def __init__(self, private: X25519PrivateKey | None = None, path: Path | None = None) -> None:
        self._private = private
        self._path = path
        self._lock = threading.Lock()  # first use may come from the masking thread

    @classmethod
    def generate(cls) -> MaskingKey:
        """A fresh key pair (drawn on first use)."""
        return cls()

    @classmethod
    def kept_in(cls, path: Path | None) -> MaskingKey:
        """The key pair kept in ``path`` on the participant's own node: read if it is there,
        else drawn and written on first use. A pooled participant set up again on another
        worker, or after an eviction, keeps the key whose public half the driver relayed."""
        return cls(path=path)

    @property
    def private(self) -> X25519PrivateKey:
        with self._lock:
            if self._private is None:
                from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

                if self._path is not None and self._path.exists():
                    self._private = X25519PrivateKey.from_private_bytes(self._path.read_bytes())
                else:
                    self._private = X25519PrivateKey.generate()
                    self._write()
            return self._private

    def _write(self) -> None:
        """Store the private half, readable by its owner only, atomically."""
        if self._path is None:
            return
        from cryptography.hazmat.primitives import serialization

        raw = self._private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(f"{self._path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, self._path)

    @property
    def public_bytes(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def pair_seed(self, peer_public: bytes, cohort_id: int) -> bytes:
        """The seed this participant and the peer both derive (Diffie-Hellman + HKDF)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        shared = self.private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        return HKDF(
            algorithm=hashes.SHA256(), length=32, salt=cohort_id.to_bytes(8, "little", signed=True),
            info=b"fedray secure aggregation mask",
        ).derive(shared)

    def mask(self, me: str, plain: np.ndarray, peers: dict[str, bytes], cohort_id: int) -> np.ndarray:
        """``plain`` (a ring vector) plus this member's pairwise masks with every peer of
        the cohort: what it sends, and all the driver sees of it."""
        return plain + self.masks_with(me, sorted(peers), peers, cohort_id, plain.size)

    def masks_with(
        self, me: str, others: list[str], peers: dict[str, bytes], cohort_id: int, size: int
    ) -> np.ndarray:
        """``sum(sign * mask)`` over ``others``: what a survivor reveals for dropped peers."""
        signed = [(mask_sign(me, o), expand_mask(self.pair_seed(peers[o], cohort_id), size))
                  for o in others if o != me]
        return apply_masks(np.zeros(size, np.uint64), signed)


def contribution(
    held: list[tuple[np.ndarray, int, float]], clip_norm: float | None
) -> np.ndarray:
    """``sum [w n d, n]`` over a member's updates ``(d, n, w)`` in a cohort (float64), so the
    decoded sum divides into FedAvg's ``sum(w n d) / sum(n)``. With ``clip_norm`` (DP-FedAvg)
    each delta is clipped and counts once, ``[w clip(d), 1]``, as in DP-FedAvg without masks."""
    size = held[0][0].size
    out = np.zeros(size + 1, np.float64)
    for payload, num_examples, weight in held:
        values = payload.astype(np.float64)
        if clip_norm is not None:
            values *= min(1.0, clip_norm / max(float(np.linalg.norm(values)), 1e-12))
            scale, count = weight, 1.0
        else:
            scale, count = weight * num_examples, float(num_examples)
        out[:size] += scale * values
        out[size] += count
    return out


class SealedUpdates:
    """Plaintext updates a participant holds back until the driver names their cohort.

    Written by the training thread, read by the masking thread, hence the lock.
    """

    def __init__(self) -> None:
        self._held: OrderedDict[int, tuple[np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, task_id: int, payload: np.ndarray, num_examples: int) -> bool:
        """Keep a finite update for masking; a non-finite one is refused (after masking
        nobody could check it), and the receipt says so."""
        if not np.isfinite(payload).all():
            return False
        with self._lock:
            self._held[task_id] = (np.array(payload, dtype=np.float32), num_examples)
            while len(self._held) > MAX_SEALED:
                self._held.popitem(last=False)
        return True

    def mask(
        self,
        me: str,
        key: MaskingKey,
        cohort_id: int,
        peers: dict[str, bytes],
        weights: dict[int, float],
        clip_norm: float | None = None,
    ) -> np.ndarray:
        """The masked vector of this member's tasks ``weights`` (task id -> staleness weight)."""
        with self._lock:
            missing = sorted(t for t in weights if t not in self._held)
            if missing:  # e.g. the actor restarted and lost them: it drops out of the cohort
                raise LookupError(f"participant {me}: holds no sealed update for task(s) {missing}")
            held = [(*self._held.pop(t), float(w)) for t, w in sorted(weights.items())]
            # tasks finish in order, so older ones not asked for now were turned away for good
            for stale in [t for t in self._held if t < max(weights)]:
                del self._held[stale]
        return key.mask(me, encode(contribution(held, clip_norm)), peers, cohort_id)
