"""Byzantine behaviour for robustness experiments, applied by a participant to its own
payload just before it leaves (configured by ``system.attack``; honest by default).

Kept on the participant side, and real: the driver cannot tell an attacker from an
honest participant, exactly as in deployment.
"""

from __future__ import annotations

import numpy as np

from actors.spec.system import AttackSpec


def apply_attack(payload: np.ndarray, attack: AttackSpec | None, seed: int) -> np.ndarray:
    """The payload a Byzantine participant sends instead of ``payload`` (float32).

    >>> import numpy as np
    >>> apply_attack(np.array([1., -2.], np.float32), AttackSpec(kind="sign_flip", scale=10), 0).tolist()
    [-10.0, 20.0]
    """
    if attack is None:
        return payload
    if attack.kind == "sign_flip":
        return (payload * np.float32(-attack.scale)).astype(np.float32, copy=False)
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, attack.scale, payload.shape).astype(np.float32)
