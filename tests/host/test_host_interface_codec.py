"""The control-channel frame codec and the node config: enclave_app/interface/ (frames, config)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charter.enclave_app import interface as itf
from charter.enclave_app.interface import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    InterfaceError,
    decode_frame,
    encode_frame,
)

ONE_OF_EACH: list[itf.Frame] = [
    itf.Start(
        config={"workspace": "/w", "tick_ms": 10, "x": [1, 2.5, None]},
        sealed=b"s",
        ledger_last_seqno=7,
    ),
    itf.Start(config={}, sealed=None, ledger_last_seqno=0),
    itf.Tick(now_ms=1_700_000_000_000),
    itf.ClientConnection(conn_id=3, peer="127.0.0.1:5555"),
    itf.Durable(seqno=42),
    itf.EntriesRead(request_id=1, entries=[b"a", b"", b"\x00" * 100], first_seqno=5),
    itf.SnapshotRead(request_id=2, name="snapshot_10_12.committed", data=b"snap"),
    itf.SnapshotRead(request_id=2, name=None, data=None),
    itf.NodeMessage(from_address="127.0.0.1:9000", payload=b"sealed"),
    itf.Shutdown(),
    itf.Started(node_id="ab" * 32, status="PartOfNetwork", info={"service_cert": "pem"}),
    itf.WriteEntries(entries=[(1, b"e1"), (2, b"e2")]),
    itf.Truncate(seqno=3),
    itf.CommitUpTo(seqno=4),
    itf.ReadEntries(request_id=9, from_seqno=1, to_seqno=100),
    itf.WriteSnapshot(seqno=10, evidence_seqno=12, data=b"snap", committed=False),
    itf.ReadLatestSnapshot(request_id=5),
    itf.StoreSealed(blob=b"sealed-blob"),
    itf.SendToNode(node_id="cd" * 32, address="127.0.0.1:9001", payload=b"x"),
    itf.SendWhenDurable(seqno=12, node_id="cd" * 32, address="127.0.0.1:9001", payload=b"x"),
    itf.Log(level=20, message="hello"),
    itf.Fatal(reason="ledger secret lost"),
    itf.FetchEndorsements(
        request_id=6, product="Milan", chip_id=b"\x07" * 64, reported_tcb=2**63, first_server=1
    ),
    itf.EndorsementsFetched(
        request_id=6, server=1, url="https://kds/vcek", vcek=b"der", chain=b"pem", error=None
    ),
    itf.ReadOperatorFile(request_id=7, kind="ledger_chunk", name="", since=12),
    itf.ReadOperatorFile(request_id=8, kind="snapshot", name="snapshot_10_12.committed", since=0),
    itf.OperatorFileRead(request_id=7, name="ledger_1-20.committed", data=None, size_bytes=99),
    itf.OperatorFileRead(request_id=8, name=None, data=None, size_bytes=0),
    itf.OperatorFileRead(request_id=9, name="snapshot_10_12.committed", data=b"s", size_bytes=1),
    itf.IndexBlobStore(strategy="seqnos_by_key.records", bucket=3, blob=b"sealed"),
    itf.IndexBlobFetch(request_id=7, strategy="seqnos_by_key.records", bucket=3),
    itf.IndexBlobFetched(request_id=7, strategy="seqnos_by_key.records", bucket=3, blob=b"s"),
    itf.IndexBlobFetched(request_id=8, strategy="seqnos_by_key.records", bucket=4, blob=None),
]


def test_every_frame_type_round_trips_through_the_codec() -> None:
    covered = {type(f) for f in ONE_OF_EACH}
    assert covered == set(itf.HOST_TO_ENCLAVE) | set(itf.ENCLAVE_TO_HOST)
    for frame in ONE_OF_EACH:
        assert decode_frame(encode_frame(frame)) == frame


def test_encoding_is_versioned_msgpack_with_a_type_tag() -> None:
    body = encode_frame(itf.Durable(seqno=42, view=3))
    assert msgpack.unpackb(body) == [PROTOCOL_VERSION, "Durable", {"seqno": 42, "view": 3}]


def test_wrong_protocol_version_is_rejected() -> None:
    body = msgpack.packb([PROTOCOL_VERSION + 1, "Durable", {"seqno": 1, "view": 1}])
    with pytest.raises(InterfaceError, match="version"):
        decode_frame(body)


@pytest.mark.parametrize(
    ("tag", "fields"),
    [
        ("Durable", {"seqno": -1}),
        ("Durable", {"seqno": True}),
        ("Durable", {"seqno": 1.0}),
        ("Durable", {}),
        ("Durable", {"seqno": 1, "extra": 2}),
        ("Tick", {"now_ms": "1"}),
        ("NodeMessage", {"from_address": "a", "payload": "not bytes"}),
        ("NodeMessage", {"from_address": "a" * (itf.MAX_STRING_CHARS + 1), "payload": b""}),
        ("WriteEntries", {"entries": [[1]]}),
        ("WriteEntries", {"entries": [[1, "x"]]}),
        ("WriteEntries", {"entries": [[-1, b"x"]]}),
        ("EntriesRead", {"request_id": 1, "entries": [1], "first_seqno": 1}),
        ("Start", {"config": {1: 2}, "sealed": None, "ledger_last_seqno": 0}),
        ("Start", {"config": [], "sealed": None, "ledger_last_seqno": 0}),
        ("WriteSnapshot", {"seqno": 1, "evidence_seqno": 1, "data": b"", "committed": 1}),
        ("NoSuchFrame", {}),
    ],
)
def test_fields_of_the_wrong_type_or_size_are_rejected(
    tag: str, fields: dict[object, object]
) -> None:
    with pytest.raises(InterfaceError):
        decode_frame(msgpack.packb([PROTOCOL_VERSION, tag, fields]))


def test_config_data_with_extension_types_is_rejected() -> None:
    ext = msgpack.ExtType(5, b"x")
    body = msgpack.packb(
        [PROTOCOL_VERSION, "Start", {"config": {"a": ext}, "sealed": None, "ledger_last_seqno": 0}]
    )
    with pytest.raises(InterfaceError):
        decode_frame(body)


def test_deeply_nested_config_is_rejected_without_recursion_error() -> None:
    nested: object = 1
    for _ in range(200):
        nested = {"a": nested}
    body = msgpack.packb(
        [PROTOCOL_VERSION, "Start", {"config": nested, "sealed": None, "ledger_last_seqno": 0}]
    )
    with pytest.raises(InterfaceError):
        decode_frame(body)


def test_encoding_an_invalid_frame_fails_at_the_sender() -> None:
    with pytest.raises(InterfaceError, match=r"Durable\.seqno"):
        encode_frame(itf.Durable(seqno=-5))
    with pytest.raises(InterfaceError, match=r"Durable\.seqno"):
        encode_frame(itf.Durable(seqno=2**64))
    with pytest.raises(InterfaceError, match="cannot encode"):
        encode_frame(itf.Start(config={"big": 2**70}, sealed=None, ledger_last_seqno=0))
    with pytest.raises(InterfaceError):
        encode_frame(itf.NodeMessage(from_address="a", payload=bytearray(b"x")))  # type: ignore[arg-type]


def test_frame_larger_than_the_limit_is_rejected_before_parsing() -> None:
    with pytest.raises(InterfaceError, match="MAX_FRAME_BYTES"):
        decode_frame(bytes(MAX_FRAME_BYTES + 1))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            del b[rng.randrange(len(b)) :]
        elif op == 2:
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif b:
            b[rng.randrange(len(b))] = rng.choice([0x00, 0xC1, 0xD9, 0xDB, 0xDD, 0xDF, 0xFF, 0x7F])
    return bytes(b)


def test_fuzzed_frames_raise_only_interface_error() -> None:
    """12,000 random and mutated inputs: each decodes to a valid frame or raises InterfaceError."""
    rng = random.Random(20261125)
    seeds = [encode_frame(f) for f in ONE_OF_EACH]
    accepted = rejected = 0
    for i in range(12_000):
        random_bytes = i % 3 == 0
        data = (
            rng.randbytes(rng.randint(0, 64)) if random_bytes else _mutate(rng, rng.choice(seeds))
        )
        try:
            frame = decode_frame(data)
        except InterfaceError:
            rejected += 1
            continue
        # Whatever is accepted is a well-formed frame that re-encodes cleanly.
        assert decode_frame(encode_frame(frame)) == frame
        accepted += 1
    assert accepted + rejected == 12_000
    assert rejected > 6_000


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.integers(0, 9), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    tag=st.sampled_from(
        [*sorted(t.__name__ for t in itf.HOST_TO_ENCLAVE + itf.ENCLAVE_TO_HOST), "x"]
    ),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "seqno",
                "entries",
                "config",
                "payload",
                "request_id",
                "name",
                "data",
                "kind",
                "since",
                "size_bytes",
                "strategy",
                "bucket",
                "blob",
            ]
        ),
        _msgpack_values,
        max_size=4,
    ),
)
def test_structured_garbage_frames_raise_only_interface_error(
    tag: str, fields: dict[str, object]
) -> None:
    try:
        frame = decode_frame(msgpack.packb([PROTOCOL_VERSION, tag, fields]))
    except InterfaceError:
        return
    assert decode_frame(encode_frame(frame)) == frame


@pytest.mark.parametrize("strategy", ["", "..", "../x", "a/b", "UPPER", "x" * 65, "\x00"])
def test_index_blob_frames_refuse_a_strategy_that_is_no_folder_name(strategy: str) -> None:
    body = msgpack.packb(
        [PROTOCOL_VERSION, "IndexBlobFetch", {"request_id": 1, "strategy": strategy, "bucket": 0}]
    )
    with pytest.raises(InterfaceError, match="strategy name"):
        decode_frame(body)
    with pytest.raises(InterfaceError):
        itf.IndexBlobStore(strategy=strategy, bucket=0, blob=b"")


def test_index_blob_frames_refuse_a_blob_over_the_limit() -> None:
    big = b"\x00" * (itf.INDEX_BLOB_BYTES_MAX + 1)
    for tag, fields in (
        ("IndexBlobStore", {"strategy": "s", "bucket": 1, "blob": big}),
        ("IndexBlobFetched", {"request_id": 1, "strategy": "s", "bucket": 1, "blob": big}),
    ):
        with pytest.raises(InterfaceError, match="index blob over"):
            decode_frame(msgpack.packb([PROTOCOL_VERSION, tag, fields]))
    limit = b"\x00" * itf.INDEX_BLOB_BYTES_MAX
    frame = itf.IndexBlobFetched(request_id=1, strategy="s", bucket=1, blob=limit)
    assert decode_frame(encode_frame(frame)) == frame


def test_snapshot_names_round_trip_and_reject_other_files() -> None:
    assert itf.parse_snapshot_name(itf.snapshot_file_name(10, 12, True)) == (10, 12, True)
    assert itf.parse_snapshot_name("snapshot_10_12") == (10, 12, False)
    for bad in ("snapshot_10_12.tmp", "snapshot_x_1", "ledger_1-2", "snapshot_1_2.committed.x"):
        assert itf.parse_snapshot_name(bad) is None


# -- NodeConfig ------------------------------------------------------------------------------


def _write_config(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "node.json"
    path.write_text(json.dumps(data))
    return path


def test_minimal_config_gets_documented_defaults_and_absolute_paths(tmp_path: Path) -> None:
    path = _write_config(
        tmp_path,
        {"workspace": "ws", "start": {"mode": "start", "members": [{"cert": "m0.pem"}]}},
    )
    config = itf.load_config(path)
    assert config.workspace == tmp_path / "ws"
    assert config.ledger_dir == tmp_path / "ws" / "ledger"
    assert config.snapshots_dir == tmp_path / "ws" / "snapshots"
    assert config.start.members[0].cert == tmp_path / "m0.pem"
    assert config.app == "charter.enclave_app.samples.logging"
    assert config.tick_ms == 10
    assert config.ledger_chunk_bytes == 5_000_000
    assert (config.signatures.tx_count, config.signatures.delay_ms) == (100, 50)
    assert config.snapshots.tx_count == 10_000
    dumped = config.model_dump(mode="json")
    start = itf.Start(config=dumped, sealed=None, ledger_last_seqno=0)
    assert decode_frame(encode_frame(start)) == start


def test_member_data_and_service_config_are_not_rewritten_as_paths(tmp_path: Path) -> None:
    path = _write_config(
        tmp_path,
        {
            "workspace": "/abs/ws",
            "start": {
                "mode": "start",
                "members": [{"cert": "/m.pem", "data": {"cert": "keep"}}],
                "service_config": {"cert": "keep"},
            },
        },
    )
    config = itf.load_config(path)
    assert config.workspace == Path("/abs/ws")
    assert config.start.members[0].data == {"cert": "keep"}
    assert config.start.service_config == {"cert": "keep"}


def test_config_sent_in_start_validates_again_unchanged_in_the_enclave(tmp_path: Path) -> None:
    path = _write_config(
        tmp_path,
        {"workspace": "ws", "start": {"mode": "start", "members": [{"cert": "m.pem"}]}},
    )
    config = itf.load_config(path)
    assert itf.NodeConfig.model_validate(config.model_dump(mode="json")) == config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"start": {"mode": "recover"}}, "workspace"),
        ({"workspace": "w", "start": {"mode": "start"}}, "at least one member"),
        ({"workspace": "w", "start": {"mode": "join"}}, "join"),
        ({"workspace": "w", "rpc_address": "localhost", "start": {"mode": "recover"}}, "host:port"),
        ({"workspace": "w", "rpc_address": "a:70000", "start": {"mode": "recover"}}, "host:port"),
        ({"workspace": "w", "tick_ms": 0, "start": {"mode": "recover"}}, "tick_ms"),
        ({"workspace": "w", "typo": 1, "start": {"mode": "recover"}}, "typo"),
        ({"workspace": "w", "platform": "sgx", "start": {"mode": "recover"}}, "platform"),
        (
            {
                "workspace": "w",
                "consensus": {"election_timeout_ms": [500, 100]},
                "start": {"mode": "recover"},
            },
            "election_timeout_ms",
        ),
        (
            {
                "workspace": "w",
                "rpc_interface": {"max_open_sessions_soft": 10, "max_open_sessions_hard": 5},
                "start": {"mode": "recover"},
            },
            "max_open_sessions_hard",
        ),
        (
            {
                "workspace": "w",
                "rpc_interface": {"request_header_timeout_ms": 0},
                "start": {"mode": "recover"},
            },
            "request_header_timeout_ms",
        ),
        (
            {
                "workspace": "w",
                "start": {
                    "mode": "recover",
                    "cose_signatures": {"issuer": "https://scitt.example.org", "subject": "s"},
                },
            },
            "not a URL",
        ),
        (
            {
                "workspace": "w",
                "start": {"mode": "recover", "cose_signatures": {"issuer": "scitt.example.org"}},
            },
            "subject",
        ),
        (
            {
                "workspace": "w",
                "start": {
                    "mode": "join",
                    "join": {"target": "127.0.0.1:1", "service_cert": "s.pem"},
                    "cose_signatures": {"issuer": "scitt.example.org", "subject": "s"},
                },
            },
            "takes cose_signatures from the service",
        ),
    ],
)
def test_invalid_config_is_rejected_with_a_clear_message(
    tmp_path: Path, data: object, message: str
) -> None:
    with pytest.raises(InterfaceError, match=message):
        itf.load_config(_write_config(tmp_path, data))


def test_oversized_or_non_json_config_is_rejected(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (itf.MAX_CONFIG_BYTES + 1))
    with pytest.raises(InterfaceError, match="larger than"):
        itf.load_config(big)
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"{not json")
    with pytest.raises(InterfaceError, match="not valid JSON"):
        itf.load_config(bad)
    with pytest.raises(InterfaceError, match="cannot read"):
        itf.load_config(tmp_path / "missing.json")
