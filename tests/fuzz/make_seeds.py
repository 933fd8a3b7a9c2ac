"""Valid files the fuzzers start from (dev/fuzz.sh runs this first):
small model files (.lstmx) in tests/fuzz/corpus/model/ and small
checkpoints (.npz) in tests/fuzz/corpus/checkpoint/, named seed-*, one per
feature the readers branch on (layers, projection, directions, bias, dtype;
Sequential, optimiser state, dropout's generator state).

    python tests/fuzz/make_seeds.py [corpus dir]

Deterministic (fixed seeds); small, so that the fuzzers' inputs stay short.
"""

import sys
from pathlib import Path

import numpy as np

from lstm_ext import checkpoint, export, losses, nn, optim

MODELS = {
    "one-layer": dict(input_size=3, hidden_size=4),
    "one-layer-f64": dict(input_size=2, hidden_size=3, dtype=np.float64),
    "two-layers-proj": dict(input_size=3, hidden_size=4, num_layers=2, proj_size=2),
    "bidir-nobias": dict(input_size=2, hidden_size=3, num_layers=2, bidirectional=True, bias=False),
}


def checkpoints():
    """(name, model, optimizer or None, meta) of each checkpoint seed."""
    seq = nn.Sequential(nn.Embedding(5, 2, seed=0), nn.LSTM(2, 3, seed=1), nn.Linear(3, 5, seed=2))
    opt = optim.Adam(seq, lr=1e-2)
    tokens = np.array([[0, 1], [2, 3]])
    logits, _ = seq(tokens)
    _, g = losses.softmax_cross_entropy(logits, (tokens + 1) % 5)
    seq.backward(g)
    opt.step()
    yield "sequential-adam", seq, opt, {"vocab": "abcde"}
    yield "lstm-dropout", nn.LSTM(2, 2, num_layers=2, dropout=0.5, seed=3), None, {}
    yield "linear-f64", nn.Linear(2, 2, dtype=np.float64, seed=4), None, {"note": 1}
    lstm = nn.LSTM(2, 3, proj_size=2, bidirectional=True, batch_first=True, dtype="float64", seed=5)
    yield "lstm-bidir-proj-f64", lstm, None, {}


def main(root: Path) -> None:
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "checkpoint").mkdir(parents=True, exist_ok=True)
    for name, cfg in MODELS.items():
        export.save_model(nn.LSTM(**cfg, seed=7), root / "model" / f"seed-{name}.lstmx")
    for name, model, opt, meta in checkpoints():
        checkpoint.save(root / "checkpoint" / f"seed-{name}.npz", model, opt, meta)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "corpus")
