"""Scenario tests in readable text files (tests/consensus/scenarios/*.txt), in the spirit of
etcd's datadriven tests: blocks of commands, a `----` line, then the exact expected output.

Commands (times in ms; node ids are words):
  cluster a b c [manual-durable] [no-pre-vote]   start a network with these voters
  campaign a | run 300 | tick a 50 | deliver      elections, time, message delivery
  propose a DATA [sig]                            prints view.seqno (or the error code)
  durable a                                       a's host flushes everything written
  isolate a | heal | crash a | restart a          faults
  restart a drop-unsigned-tail                    a restarts without its unsigned tail
  join d [snapshot]                               d starts (empty, or from a's snapshot) and
                                                  every node treats it as a learner
  caught-up a d                                   does primary a count d as caught up?
  add a d | remove a d                            propose a configuration change on a
  status                                          one line per node
  log a                                           a's stored entries: seqno view [sig] data

Set CHARTER_SCENARIO_REWRITE=1 to rewrite the expected outputs (then review the diff).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from consensus_cluster import Cluster

from charter.consensus import ConsensusError, RaftConfig, StartState

SCENARIOS = Path(__file__).parent / "scenarios"
CONFIG = RaftConfig(
    election_timeout_min_ms=100, election_timeout_max_ms=200, heartbeat_interval_ms=20
)


class Runner:
    def __init__(self) -> None:
        self.c: Cluster | None = None

    @property
    def cluster(self) -> Cluster:
        assert self.c is not None, "scenario must start with `cluster`"
        return self.c

    def run(self, line: str) -> str:
        cmd, *args = line.split()
        handler = getattr(self, "cmd_" + cmd.replace("-", "_"), None)
        if handler is None:
            raise ValueError(f"unknown scenario command {cmd!r}")
        try:
            out = handler(*args)
        except ConsensusError as exc:
            return f"error: {exc.code}"
        return "ok" if out is None else str(out)

    def cmd_cluster(self, *args: str) -> None:
        nodes = [a for a in args if a not in ("manual-durable", "no-pre-vote")]
        cfg = CONFIG
        if "no-pre-vote" in args:
            cfg = RaftConfig(
                election_timeout_min_ms=100,
                election_timeout_max_ms=200,
                heartbeat_interval_ms=20,
                pre_vote=False,
            )
        self.c = Cluster(nodes, config=cfg, auto_durable="manual-durable" not in args)

    def cmd_campaign(self, node: str) -> None:
        self.cluster.campaign(node)

    def cmd_run(self, ms: str) -> None:
        self.cluster.run_for(int(ms))

    def cmd_tick(self, node: str, ms: str) -> None:
        self.cluster.tick(node, int(ms))

    def cmd_deliver(self) -> None:
        self.cluster.deliver()

    def cmd_propose(self, node: str, data: str, *flags: str) -> str:
        view, seqno = self.cluster.propose(node, data.encode(), signature="sig" in flags)
        return f"{view}.{seqno}"

    def cmd_durable(self, node: str) -> None:
        self.cluster.make_durable(node)
        self.cluster.deliver()

    def cmd_isolate(self, node: str) -> None:
        self.cluster.isolate(node)

    def cmd_heal(self) -> None:
        self.cluster.heal()

    def cmd_crash(self, node: str) -> None:
        self.cluster.crash(node)

    def cmd_restart(self, node: str, *mode: str) -> None:
        self.cluster.restart(node, drop_unsigned_tail="drop-unsigned-tail" in mode)

    def cmd_join(self, node: str, *mode: str) -> None:
        c = self.cluster
        if "snapshot" in mode:
            primary = c.nodes[c.primary() or ""]
            seqno = primary.commit_index
            view = primary.term_at(seqno) or 0
            start = StartState(
                configuration=primary.log.configuration_at(seqno),
                last_index=seqno,
                last_term=view,
                commit_index=seqno,
            )
        else:
            start = StartState(configuration=frozenset())
        c.add(node, start)
        for raft in c.nodes.values():
            raft.add_learner(node)

    def cmd_caught_up(self, primary: str, node: str) -> str:
        return "true" if self.cluster.nodes[primary].is_caught_up(node) else "false"

    def _reconfigure(self, primary: str, new: frozenset[str], data: str) -> str:
        c = self.cluster
        view, seqno = c.nodes[primary].propose(data.encode(), signature=True, configuration=new)
        c.process(primary)
        c.deliver()
        return f"{view}.{seqno}"

    def cmd_add(self, primary: str, node: str) -> str:
        conf = self.cluster.nodes[primary].configuration
        return self._reconfigure(primary, conf | {node}, f"add-{node}")

    def cmd_remove(self, primary: str, node: str) -> str:
        conf = self.cluster.nodes[primary].configuration
        return self._reconfigure(primary, conf - {node}, f"remove-{node}")

    def cmd_status(self) -> str:
        c = self.cluster
        lines = []
        for node, r in sorted(c.nodes.items()):
            state = "down" if node in c.down else r.role.value
            lines.append(
                f"{node}: {state} view={r.view} last={r.last_index} commit={r.commit_index} "
                f"leader={r.leader_id or '-'} voters={','.join(sorted(r.configuration))}"
            )
        return "\n".join(lines)

    def cmd_log(self, node: str) -> str:
        entries = self.cluster.disks[node].entries
        if not entries:
            return "(empty)"
        return "\n".join(
            f"{e.index} {e.term}{' sig' if e.signature else ''} {e.data.decode()}" for e in entries
        )


def _parse(text: str) -> list[tuple[list[str], list[str]]]:
    """Blocks of (commands, expected output lines)."""
    blocks: list[tuple[list[str], list[str]]] = []
    lines = [ln.rstrip() for ln in text.splitlines()]
    i = 0
    while i < len(lines):
        if not lines[i]:
            i += 1
            continue
        cmds: list[str] = []  # comment lines are kept (and skipped when running)
        while i < len(lines) and lines[i] != "----":
            if lines[i]:
                cmds.append(lines[i])
            i += 1
        assert i < len(lines), f"block {cmds} has no ---- line"
        i += 1
        expected: list[str] = []
        while i < len(lines) and lines[i]:
            expected.append(lines[i])
            i += 1
        blocks.append((cmds, expected))
    return blocks


def _render(blocks: list[tuple[list[str], list[str]]]) -> str:
    out: list[str] = []
    for cmds, expected in blocks:
        out += [*cmds, "----", *expected, ""]
    return "\n".join(out)


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.txt")), ids=lambda p: p.stem)
def test_scenario_script_produces_the_expected_state(path: Path) -> None:
    text = path.read_text()
    blocks = _parse(text)
    runner = Runner()
    actual: list[tuple[list[str], list[str]]] = []
    for cmds, expected in blocks:
        got = [runner.run(cmd) for cmd in cmds if not cmd.startswith("#")]
        output = "\n".join(g for g in got if g != "ok") or "ok"
        actual.append((cmds, output.splitlines()))
        if not os.environ.get("CHARTER_SCENARIO_REWRITE"):
            assert output.splitlines() == expected, f"{path.name}: after {cmds}"
    if os.environ.get("CHARTER_SCENARIO_REWRITE"):
        path.write_text(_render(actual) + "\n")
    assert blocks, f"{path.name} holds no scenario blocks"
