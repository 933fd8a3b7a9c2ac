"""atheris harness over the Python readers: lstm_ext.checkpoint.load (.npz)
and lstm_ext.export.load_model (.lstmx), with the C++ reader beside the
latter (tests/fuzz/oracle.py says what each must do). Run by dev/fuzz.sh:

    dev/fuzz.sh checkpoint 600

or directly, with libFuzzer's flags: python tests/fuzz/fuzz_checkpoint.py
[-max_total_time=60] CORPUS_DIR... An input that breaks the rules raises,
and atheris keeps it as a crash.

The readers get each input with its stored zip members' CRCs recomputed
(oracle.with_fixed_crcs), so that changes inside a member reach them; the
kept corpus holds inputs so repaired (``--repair FILE...`` rewrites files in
place: dev/fuzz.sh merge does it), which the replay reads as they are.
"""

import os
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__" and sys.argv[1:2] == ["--repair"]:
    import oracle

    for name in sys.argv[2:]:
        p = Path(name)
        p.write_bytes(oracle.with_fixed_crcs(p.read_bytes()))
    sys.exit()

import atheris

with atheris.instrument_imports(include=["lstm_ext", "numpy.lib", "zipfile", "json", "oracle"]):
    import json  # noqa: F401  (instrumented where not yet imported)
    import zipfile  # noqa: F401

    import numpy.lib.format  # noqa: F401
    import oracle

_PATH = Path(tempfile.mkdtemp(prefix="lstm_ext_fuzz_")) / "input"  # dev/fuzz.sh: in /dev/shm


def test_one_input(data: bytes) -> None:
    data = oracle.with_fixed_crcs(data)
    _PATH.write_bytes(data)
    oracle.check(_PATH, data)


if __name__ == "__main__":
    # libFuzzer's -merge=1 reruns argv[0], which must then be an executable
    # that runs this file: dev/fuzz.sh makes one and names it in FUZZ_SELF
    atheris.Setup([os.environ.get("FUZZ_SELF", sys.argv[0]), *sys.argv[1:]], test_one_input)
    atheris.Fuzz()
