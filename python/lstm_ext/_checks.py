"""Checks shared by the modules that load saved state."""

import numpy as np


def check_state_keys(state: dict, shapes: dict, what: str = "state") -> None:
    """ValueError unless ``state`` has exactly the keys of ``shapes``, each
    with its shape; the message lists every missing, unexpected and
    mis-shaped key at once."""
    missing = [k for k in shapes if k not in state]
    extra = [k for k in state if k not in shapes]
    wrong = [
        f"{k}: expected shape {tuple(shapes[k])}, got {np.shape(state[k])}"
        for k in shapes
        if k in state and np.shape(state[k]) != tuple(shapes[k])
    ]
    if missing or extra or wrong:
        parts = [f"missing keys {missing}"] if missing else []
        parts += [f"unexpected keys {extra}"] if extra else []
        raise ValueError(f"{what}: " + "; ".join(parts + wrong))
