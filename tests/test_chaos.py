"""``bench/chaos.py --quick``: faults injected under load (a poison-pill burst, an interests
worker killed and restarted, a replica's snapshot corrupted before its restart, the broker
frozen) lose no engagement, apply none twice, and dead-letter every malformed message.

The encoder worker runs a tiny text encoder exported at test time (as in test_demo.py); every
other role is what ``make chaos`` runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from encoders.export import export_text_encoder
from encoders.text_model import build_tiny_text_encoder

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chaos-encoder")
    export_text_encoder(root / "model", source=build_tiny_text_encoder(root / "source", dim=32))
    return root / "model"


@pytest.mark.timeout(480)
def test_quick_chaos_run_loses_nothing_doubles_nothing_and_dead_letters_every_poison_pill(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "chaos.py"),
            "--quick",
            "--model-dir",
            str(tiny_model_dir),
            "--workdir",
            str(tmp_path / "run"),
            "--no-write-docs",
        ],
        capture_output=True,
        text=True,
        timeout=450,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    detail = json.dumps(result, indent=1)[:6000]

    assert result["faults"] == 4
    assert result["events_sent"] > 1000, detail
    # Every event the load sent reached the log, and the log's events are all applied, once.
    assert result["verification"]["events_in_log"] == result["events_sent"], detail
    assert result["events_lost"] == 0, detail
    assert result["events_double_applied"] == 0, detail
    # Each replica answers every user as the replay says, and indexes every item.
    verification = result["verification"]
    assert verification["replicas"] == {
        name: {
            "users": verification["users"],
            "wrong": 0,
            "unreachable": 0,
            "index_items": verification["items"],
        }
        for name in ("serving-1", "serving-2")
    }, detail
    # 500 malformed messages on each input topic: one letter each, with its reason.
    assert result["dead_letters_expected"] == 1000
    assert result["dead_letters_found"] == 1000, detail
    letters = result["dead_letters"]
    assert letters["missing_by_kind"] == {} and letters["wrong_topic"] == 0, detail
    assert letters["without_reason"] == 0, detail
    # Every fault over, every role caught up within the run's timeout, none restarted by itself.
    assert result["max_recovery_s"] is not None, detail
    assert result["unexpected_exits"] == [], detail
    # The replica whose snapshots were cut found every generation broken, rebuilt its index
    # from its store, and answered as above.
    corrupt = result["per_fault"]["corrupt-serving-2"]
    generations = {Path(f).parent for f in corrupt["truncated_files"]}
    assert generations, detail
    assert corrupt["log"] == {
        "index_snapshot_used": False,
        "broken_snapshots_ignored": len(generations),
        "tracebacks": 0,
    }, detail
