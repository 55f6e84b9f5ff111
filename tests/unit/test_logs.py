"""Library logs go to <run_dir>/logs/rank<r>.log; rltool's own lines stay on the console."""
import logging
import os
import sys
import warnings

import pytest

from rltool.logs import Tally, routed_logs


@pytest.fixture(autouse=True)
def vllm_loggers_as_in_a_cli_run():
    """In `rltool train` vLLM is first imported inside routed_logs (VLLM_CONFIGURE_LOGGING=0), so its
    loggers have no handler of their own and propagate. A test that ran vLLM earlier in this pytest
    process left vLLM's own console handler on them: take it off for these tests, then put it back."""
    logger = logging.getLogger("vllm")
    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [], True
    yield
    logger.handlers, logger.propagate = saved


def test_library_logs_stderr_and_warnings_go_to_the_file(tmp_path, capfd):
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stdout)  # what Hydra puts on the root logger
    root.addHandler(console)
    deepspeed_like = logging.getLogger("DeepSpeed")  # gets its own stdout handler when imported mid-run
    try:
        with routed_logs(tmp_path, rank=1) as path:
            own = logging.StreamHandler(sys.stdout)
            deepspeed_like.addHandler(own)
            deepspeed_like.propagate = False
            print("plan: rltool's own line", flush=True)
            logging.getLogger("vllm.engine").warning("RotaryEmbedding: Failed to load weights")
            deepspeed_like.warning("Setting accelerator to CPU")
            warnings.warn("a library's FutureWarning", FutureWarning)
            os.write(2, b"[W utils.cpp:68] C-level warning\n")
            print("a progress bar", file=sys.stderr, flush=True)
        deepspeed_like.removeHandler(own)
        logging.getLogger("vllm.engine").warning("after the block: the console again")
    finally:
        root.removeHandler(console)
    out, err = capfd.readouterr()
    assert path == tmp_path / "logs" / "rank1.log"
    assert "plan: rltool's own line" in out and "after the block" in out
    for line in ("RotaryEmbedding", "Setting accelerator", "FutureWarning", "C-level", "progress bar"):
        assert line not in out + err, line
        assert line in path.read_text(), line
    assert "rltool's own line" not in path.read_text()


def test_verbose_keeps_the_console(tmp_path, capfd):
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stdout)
    root.addHandler(console)
    try:
        with routed_logs(tmp_path, rank=0, verbose=True) as path:
            logging.getLogger("vllm.engine").warning("shown")
    finally:
        root.removeHandler(console)
    assert "shown" in capfd.readouterr().out and "shown" in path.read_text()


def test_tally_says_a_recurring_warning_once_then_the_total(capsys):
    tally = Tally()
    for step, unscored in enumerate([0, 3, 0, 2], start=1):
        tally.add_metrics(step, {"reward/unscored": float(unscored)})
    tally.summary(4)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["warning: step 2: 3 completions could not be scored (reward None: left out of their group's "
                     "baseline) (printed once; the total comes at the end)",
                     "warning: 5 completions could not be scored (reward None: left out of their group's baseline), "
                     "in 2 of 4 steps"]
