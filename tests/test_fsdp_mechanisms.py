"""FSDP2 mechanisms with 2 gloo ranks (tests/fsdp_two_ranks_script.py under torchrun).

- Accumulation: 4 micro-steps reduce-scatter exactly as often as 1 (only the last syncs).
- Resume: from a single-file checkpoint only rank 0 reads the optimizer file, the others
  receive their shards by broadcast; from a sharded one no rank reads a whole file or calls
  torch.load. Both end with the saved state exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_train_distributed import _free_port

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("fsdp_two_ranks_script.py")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(SCRIPT), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_accumulation_reduces_once_per_optimizer_step(reports: list[dict]) -> None:
    for report in reports:
        assert report["reduces_1_micro"] > 0
        assert report["reduces_4_micro"] == report["reduces_1_micro"]


def test_only_rank_0_reads_a_single_file_optimizer_state(reports: list[dict]) -> None:
    assert [r["single_file_reads"] for r in reports] == [1, 0]
    assert reports[0]["single_file_equal"] is True


def test_a_sharded_optimizer_state_is_read_in_slices_without_pickles(reports: list[dict]) -> None:
    assert [r["sharded_reads"] for r in reports] == [0, 0]
    assert reports[0]["sharded_equal"] is True
