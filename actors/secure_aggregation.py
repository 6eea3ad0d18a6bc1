"""Participant-side secure aggregation: X25519 key agreement and masking of one update.

Each participant holds an X25519 key pair; the driver only relays public keys. For a
cohort, every pair derives the same 32-byte seed from their Diffie-Hellman secret with
HKDF (salted by the cohort id, so masks never repeat across rounds); the seed expands to
the pairwise mask (``strategies/secure_aggregation.py``). The participant sends
``encode([n * delta, n]) + sum(+-masks)``: the driver learns neither the delta nor the
example count of anyone, only the cohort's totals. Under DP-FedAvg the participant clips
its delta first and sends ``[clip(delta), 1]``, since the driver cannot clip what it cannot
read.

Threat model: an honest-but-curious driver. Without Bonawitz et al.'s second (self) mask
and secret-shared keys, a driver that lies about who dropped out could have survivors
reveal every mask of one participant; that variant is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from strategies.secure_aggregation import apply_masks, encode, expand_mask, mask_sign
from strategies.types import Instructions

SECAGG_OPTION = "secure_aggregation"
"""Key in ``Instructions.options``: ``{"cohort_id": int, "peers": {name: public key}}``."""


@dataclass
class MaskingKey:
    """One participant's X25519 key pair."""

    private: X25519PrivateKey

    @classmethod
    def generate(cls) -> MaskingKey:
        return cls(X25519PrivateKey.generate())

    @property
    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def pair_seed(self, peer_public: bytes, cohort_id: int) -> bytes:
        """The seed this participant and the peer both derive (Diffie-Hellman + HKDF)."""
        shared = self.private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        return HKDF(
            algorithm=hashes.SHA256(), length=32, salt=cohort_id.to_bytes(8, "little", signed=True),
            info=b"fedray secure aggregation mask",
        ).derive(shared)

    def masks_with(
        self, me: str, others: list[str], peers: dict[str, bytes], cohort_id: int, size: int
    ) -> np.ndarray:
        """``sum(sign * mask)`` over ``others``: what a survivor reveals for dropped peers."""
        signed = [(mask_sign(me, o), expand_mask(self.pair_seed(peers[o], cohort_id), size))
                  for o in others if o != me]
        return apply_masks(np.zeros(size, np.uint64), signed)


def protect(
    payload: np.ndarray, num_examples: int, instructions: Instructions, me: str, key: MaskingKey
) -> np.ndarray:
    """The payload to send: unchanged, or masked when the task asks for secure aggregation.

    A non-finite payload is refused here, because after masking nobody can check it.
    """
    cohort = instructions.options.get(SECAGG_OPTION)
    if cohort is None:
        return payload
    if not np.isfinite(payload).all():
        raise ValueError(f"participant {me}: refusing to mask a non-finite update")
    values, weight = payload.astype(np.float64), float(num_examples)
    clip = cohort.get("clip_norm")
    if clip is not None:  # DP-FedAvg: bounded, equally weighted contributions
        norm = float(np.linalg.norm(values))
        values, weight = values * min(1.0, clip / max(norm, 1e-12)), 1.0
    plain = encode(np.concatenate([values * weight, [weight]]))
    peers: dict[str, bytes] = cohort["peers"]
    return plain + key.masks_with(me, sorted(peers), peers, int(cohort["cohort_id"]), plain.size)
