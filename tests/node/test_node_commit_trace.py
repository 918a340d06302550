"""The commit trace (enclave_app/node/commit_trace.py): off unless asked for, and when on
one line per step of each followed signature, which scripts/commit_trace.py merges."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from charter.consensus import LogEntry
from charter.enclave_app.node import commit_trace

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import commit_trace as merge


def test_the_trace_is_off_unless_the_environment_turns_it_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(commit_trace.ENV, raising=False)
    assert commit_trace.from_environment() is None
    monkeypatch.setenv(commit_trace.ENV, "1")
    assert commit_trace.from_environment() is not None


def test_each_step_of_each_followed_signature_is_logged_once_and_merges_into_a_timeline(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger=commit_trace.__name__)
    primary, backup = commit_trace.CommitTrace(), commit_trace.CommitTrace()

    def taken() -> list[str]:
        lines = [r.getMessage() for r in caplog.records]
        caplog.clear()
        return lines

    # The merge leaves out what was emitted before every backup was following (a joiner
    # catching up receives old signatures late): signature 5 marks the start.
    primary.emitted(5)
    primary_lines = taken()
    backup.received([LogEntry(5, 1, b"", True)])
    backup_lines = taken()
    primary.emitted(10)
    primary.emitted(20)
    primary_lines += taken()
    backup.received([LogEntry(9, 1, b""), LogEntry(10, 1, b"", True), LogEntry(20, 1, b"", True)])
    backup.durable(10)
    backup.durable(20)
    backup.durable(20)
    backup_lines += taken()
    primary.durable(20)
    primary.durable(20)
    primary.acked("b" * 64, 20)
    primary.committed(20)
    primary.committed(20)
    primary_lines += taken()

    def steps(lines: list[str]) -> list[str]:
        return [line.split()[1].removeprefix("step=") for line in lines]

    assert (
        sorted(steps(primary_lines))
        == ["acked"] * 3 + ["committed"] * 3 + ["durable"] * 3 + ["emitted"] * 3
    ), "each step once per followed signature"
    assert sorted(steps(backup_lines)) == ["durable"] * 3 + ["received"] * 3  # 9 signs nothing

    # The host's line per fsync (host/storage.py): one fsync made 5..20 durable.
    t_ms = float(primary_lines[-1].split("t_ms=")[1].split()[0])
    primary_lines.append(f"event=commit_trace step=host_durable seqno=20 t_ms={t_ms:.2f}")
    backup_lines.append(f"event=commit_trace step=host_durable seqno=20 t_ms={t_ms:.2f}")
    for name, lines in (("node0", primary_lines), ("node1", backup_lines)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "node.log").write_text("\n".join(lines))
    out = merge.breakdown(merge.read(tmp_path))
    steps_merged = ("committed", "primary_durable", "first_ack", "backup_received", "backup_fsync")
    for step in (*steps_merged, "primary_host_fsynced", "backup_host_fsynced"):
        assert len(out[step]) == 2, step
        assert all(v >= 0 for v in out[step])
