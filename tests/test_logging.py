import logging
import os
import subprocess
import sys

import pytest

import msmodelslim
from msmodelslim import set_logger_level
from msmodelslim.errors import ModelslimError, SchemaValidateError
from msmodelslim.utils.logging import LOG_FORMAT, scrub


@pytest.fixture(autouse=True)
def _restore_level():
    yield
    logging.getLogger("msmodelslim").setLevel(logging.INFO)


def test_logger_setup_matches_original():
    code = ("import logging, msmodelslim; log = logging.getLogger('msmodelslim'); "
            "assert msmodelslim.logger is log; h, = log.handlers; "
            "print(log.propagate, log.level, type(h).__name__, h.formatter._fmt, msmodelslim.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"False {logging.INFO} StreamHandler {LOG_FORMAT} ['set_logger_level']"


@pytest.mark.parametrize("name,level", [
    ("notset", logging.NOTSET), ("debug", logging.DEBUG), ("INFO", logging.INFO), ("Warn", logging.WARNING),
    ("warning", logging.WARNING), ("error", logging.ERROR), ("FATAL", logging.CRITICAL),
    ("critical", logging.CRITICAL)])
def test_levels_case_insensitive_with_aliases(name, level):
    set_logger_level("error" if level != logging.ERROR else "debug")
    set_logger_level(name)
    assert logging.getLogger("msmodelslim").level == level


def test_default_argument_is_info():
    set_logger_level("error")
    set_logger_level()
    assert logging.getLogger("msmodelslim").level == logging.INFO


def test_unknown_name_warns_and_keeps_level(caplog):
    log = logging.getLogger("msmodelslim")
    set_logger_level("warning")
    log.addHandler(caplog.handler)
    try:
        set_logger_level("loud")
    finally:
        log.removeHandler(caplog.handler)
    assert log.level == logging.WARNING
    assert "Set 'loud' log level failed." in caplog.text


@pytest.mark.parametrize("bad", [10, None, 1.5, ["info"]])
def test_non_str_raises_schema_error(bad):
    with pytest.raises(SchemaValidateError) as info:
        set_logger_level(bad)
    err = info.value
    assert isinstance(err, ModelslimError) and isinstance(err, TypeError)
    assert err.code == 203
    assert str(err).startswith("Code: 203, Message: ")
    assert "TIP:" in str(err)


def test_control_characters_are_scrubbed(capsys):
    log = logging.getLogger("msmodelslim")
    stream_handler = log.handlers[0]
    old_stream = stream_handler.setStream(sys.stderr)
    try:
        log.info("line1\nFAKE - msmodelslim - ERROR - x%0aforged\ttab\r")
    finally:
        stream_handler.setStream(old_stream)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "line1 FAKE" in err and "x forged tab" in err
    assert scrub("a%0Db\x7fc\bd") == "a b c d"


RANK_SCRIPT = r"""
import os, sys, torch, torch.distributed as dist
import torch.multiprocessing as mp

def run(rank):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    import msmodelslim
    msmodelslim.set_logger_level("debug")
    msmodelslim.logger.info("info-from-rank-%d", rank)
    msmodelslim.logger.debug("debug-from-rank-%d", rank)
    dist.barrier()
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(run, nprocs=2)
"""


def test_rank_zero_filter_with_real_processes(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(port)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "info-from-rank-0" in proc.stderr
    assert "info-from-rank-1" not in proc.stderr
    assert "debug-from-rank-0" in proc.stderr and "debug-from-rank-1" in proc.stderr
