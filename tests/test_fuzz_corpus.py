"""The fuzzers' kept inputs replayed through every reader (issue 8).

tests/fuzz/corpus/model/ (libFuzzer over the C++ reader) and
tests/fuzz/corpus/checkpoint/ (atheris over the Python readers) hold the
valid seeds (seed-*), the inputs that once crashed a reader (crash-*, each
fixed since) and the inputs that reached new code; dev/fuzz.sh runs the
fuzzers and adds to them. Every file of both goes through
``checkpoint.load``, ``export.load_model`` and the C++ reader
(``_core._model_from_bytes``): each must load or raise its documented
ValueError with a message, never anything else, never a warning; the two
.lstmx readers must agree; a model that loads runs one forward step
(tests/fuzz/oracle.py, the fuzz harness's own rules). No fuzzer needed.
"""

from pathlib import Path

import pytest
from fuzz import oracle

CORPUS = Path(__file__).parent / "fuzz" / "corpus"
FILES = sorted(p for p in CORPUS.glob("*/*") if p.is_file())


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_reader_loads_or_refuses(path):
    oracle.check(path, path.read_bytes())


@pytest.mark.parametrize("path", [p for p in FILES if p.name.startswith("seed-")],
                         ids=lambda p: p.name)  # fmt: skip
def test_the_seeds_load(path):
    """The valid files the fuzzers start from load (else the fuzzers would
    start from refusals, and the replay above would test little)."""
    if path.suffix == ".npz":
        assert oracle.check_checkpoint(path) is not None
    else:
        assert oracle.check_lstmx(path, path.read_bytes()) is not None


def test_the_corpus_stays_small():
    """Both corpora exist, and together stay small enough to replay in seconds."""
    assert {p.parent.name for p in FILES} == {"model", "checkpoint"}
    assert sum(p.stat().st_size for p in FILES) < 512 * 1024
