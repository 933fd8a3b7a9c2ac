"""Checkpoints: round trip, resumed training identical to uninterrupted
training, atomic writes, and clear errors for every kind of bad file."""

import json
import os
import re
import zipfile

import numpy as np
import pytest

from lstm_ext import checkpoint, losses, nn, optim
from lstm_ext.checkpoint import CheckpointError


def make_model(dropout=0.0):
    return nn.Sequential(
        nn.Embedding(9, 4, seed=0),
        nn.LSTM(4, 6, 2, dropout=dropout, seed=1),
        nn.Linear(6, 9, seed=2),
    )


def batches(step):
    r = np.random.default_rng([5, step])
    x = r.integers(0, 9, (7, 3))
    return x, (x + 1) % 9


def step_fn(model, batch):
    logits, _ = model(batch[0])
    loss, g = losses.softmax_cross_entropy(logits, batch[1])
    model.backward(g)
    return loss


def train(model, opt, steps, start=0):
    for s in range(start, start + steps):
        opt.zero_grad()
        step_fn(model, batches(s))
        opt.step()


def test_round_trip(tmp_path):
    model = make_model()
    opt = optim.AdamW(model, lr=1e-2)
    train(model, opt, 3)
    path = tmp_path / "m.npz"
    checkpoint.save(path, model, opt, {"vocab": "abc", "note": 1})
    ck = checkpoint.load(path)
    assert ck.meta == {"vocab": "abc", "note": 1}
    assert ck.model.config() == model.config()
    for k, v in model.params.items():
        np.testing.assert_array_equal(ck.model.params[k], v)
        assert ck.model.params[k].dtype == v.dtype
    assert "steps" in ck.optimizer_state
    assert checkpoint.load(path, expect_config=model.config()).model is not None
    other = nn.Sequential(nn.LSTM(4, 6), nn.Linear(6, 9))
    with pytest.raises(CheckpointError, match="does not match"):
        checkpoint.load(path, expect_config=other.config())


def test_the_callers_arrays_round_trip(tmp_path):
    """save's ``arrays``: numbers of any shape and dtype back as saved, by
    name; Python objects refused (load never unpickles)."""
    model, path = make_model(), tmp_path / "a.npz"
    arrays = {"history.loss": np.array([2.5, 1.25]), "steps": np.arange(3, dtype=np.int32)}
    checkpoint.save(path, model, None, {"k": 1}, arrays)
    ck = checkpoint.load(path)
    assert sorted(ck.arrays) == sorted(arrays) and ck.meta == {"k": 1}
    for k, v in arrays.items():
        np.testing.assert_array_equal(ck.arrays[k], v)
        assert ck.arrays[k].dtype == v.dtype
    assert checkpoint.load(saved(tmp_path)[0]).arrays == {}  # none saved: none loaded
    with pytest.raises(TypeError, match=r"arrays\['x'\]: expected numbers, got dtype object"):
        checkpoint.save(path, model, None, None, {"x": np.array([None])})
    for name in ("", "a\0b", 1, "x" * 201):  # zip member names load could not read back
        with pytest.raises(ValueError, match="arrays: expected names of 1 to 200 characters"):
            checkpoint.save(path, model, None, None, {name: np.ones(2)})
    assert sorted(checkpoint.load(path).arrays) == sorted(arrays)  # the file as it was


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_resumed_training_equals_uninterrupted(tmp_path, dropout):
    a = make_model(dropout)
    opt_a = optim.Adam(a, lr=5e-3, schedule=optim.warmup_cosine(10, warmup=2))
    train(a, opt_a, 10)

    b = make_model(dropout)
    opt_b = optim.Adam(b, lr=5e-3, schedule=optim.warmup_cosine(10, warmup=2))
    train(b, opt_b, 4)
    checkpoint.save(tmp_path / "b.npz", b, opt_b)
    ck = checkpoint.load(tmp_path / "b.npz")
    opt_c = optim.Adam(ck.model, lr=5e-3, schedule=optim.warmup_cosine(10, warmup=2))
    opt_c.load_state_dict(ck.optimizer_state)
    train(ck.model, opt_c, 6, start=4)
    for k, v in a.params.items():
        np.testing.assert_array_equal(ck.model.params[k], v, err_msg=k)


def test_a_checkpoint_prints_short(tmp_path):
    model = make_model()
    opt = optim.Adam(model, 1e-3)
    train(model, opt, 1)
    checkpoint.save(tmp_path / "c.npz", model, opt, {"vocab": "x" * 10_000, "step": 1})
    text = repr(checkpoint.load(tmp_path / "c.npz"))
    assert text.startswith("Checkpoint(model=Sequential(\n  (0): Embedding(9, 4)\n")
    assert "optimizer_state=<" in text and "meta=<keys ['step', 'vocab']>" in text
    assert len(text) < 400, text


def test_no_pickle_on_load(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __meta__=np.array([{"format": checkpoint.FORMAT}], dtype=object))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(path)  # allow_pickle=False refuses the object array


def saved(tmp_path):
    path = tmp_path / "good.npz"
    checkpoint.save(path, make_model(), None)
    return path, path.read_bytes()


def test_truncated_files_are_rejected(tmp_path):
    _path, data = saved(tmp_path)
    for n in (0, 10, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{n}.npz"
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            checkpoint.load(bad)


def test_corrupt_files_are_rejected(tmp_path):
    _path, data = saved(tmp_path)
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF  # inside an array: the zip's CRC catches it
    bad = tmp_path / "flip.npz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(bad)
    with pytest.raises(CheckpointError, match="no such file"):
        checkpoint.load(tmp_path / "missing.npz")
    with pytest.raises(CheckpointError, match="a directory, not a checkpoint file"):
        checkpoint.load(tmp_path)  # had been "no such file"
    with pytest.raises(CheckpointError, match="not a regular file"):
        checkpoint.load("/dev/null")


def test_a_member_named_twice_is_refused(tmp_path):
    # zipfile reads a name's last member: a read by name would skip the checks
    # made on the first (here a compressed 1 GiB of zeros behind a checked
    # parameter, a 1 MB file that NumPy would have inflated in full)
    path, _ = saved(tmp_path)
    for method, data in [(zipfile.ZIP_DEFLATED, np.zeros(2**27)), (zipfile.ZIP_STORED, np.ones(3))]:
        bad = tmp_path / f"twice{method}.npz"
        bad.write_bytes(path.read_bytes())
        with (
            pytest.warns(UserWarning, match="Duplicate name"),
            zipfile.ZipFile(bad, "a", method) as z,
        ):
            with z.open("param/2.bias.npy", "w") as f:
                np.save(f, data)
        with pytest.raises(CheckpointError, match=re.escape("'param/2.bias.npy' appears twice")):
            checkpoint.load(bad)


def rewrite(tmp_path, path, change):
    """A copy of the checkpoint with its members changed by change(dict)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    out = tmp_path / "changed.npz"
    np.savez(out, **arrays)
    return out


def meta_of(arrays):
    return json.loads(arrays["__meta__"].tobytes())


def set_meta(arrays, meta):
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.pop("__meta__"), "not an lstm_ext checkpoint"),
        (lambda a: a.update(__meta__=np.frombuffer(b"{not json", np.uint8)), "metadata"),
        (lambda a: set_meta(a, dict(meta_of(a), format="other/9")), "format 'other/9'"),
        (lambda a: a.pop("param/2.bias"), "missing keys"),
        (lambda a: a.update({"param/2.bias": np.zeros(3, np.float32)}), "expected shape"),
        (lambda a: a.update({"param/extra": np.zeros(3)}), "unexpected keys"),
        (lambda a: set_meta(a, dict(meta_of(a), model={"type": "Nope"})), "unknown module"),
    ],
)
def test_mismatched_contents_are_rejected(tmp_path, change, match):
    path, _ = saved(tmp_path)
    with pytest.raises(CheckpointError, match=match):
        checkpoint.load(rewrite(tmp_path, path, change))


def test_save_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint as it was."""
    path, data = saved(tmp_path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, make_model(), None)
    assert path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["good.npz"]  # no temporary left
    assert zipfile.is_zipfile(path) and os.path.getsize(path) == len(data)
