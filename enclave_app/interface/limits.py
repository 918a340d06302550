"""Size limits of the host ⇄ enclave boundary, derived from the ledger entry limit.

One source: `charter.ledger.entry.ENTRY_SIZE_BYTES_MAX`, the largest ledger entry any reader
accepts. Every frame that carries entries or sealed node-to-node messages is sized from it (or
from consensus's message limit, itself checked against it) plus a named envelope, and the
relations the node relies on are asserted when this module is imported, so a change to one
limit that breaks another fails at once instead of as a dropped frame in production.
"""

from __future__ import annotations

import struct
from typing import Final

from charter.consensus.codec import MAX_MESSAGE_BYTES
from charter.consensus.types import MAX_ENTRY_BYTES as CONSENSUS_ENTRY_BYTES_MAX
from charter.ledger.entry import ENTRY_SIZE_BYTES_MAX

PROTOCOL_VERSION: Final = 1
LENGTH_PREFIX: Final = struct.Struct(">I")

# Room in a control frame beyond its largest payload: the msgpack envelope (version, tag,
# field names) and the other fields. 1 MiB is far more than any frame needs.
FRAME_ENVELOPE_BYTES: Final = 1024 * 1024
# The largest control frame body: one entry of the largest size, with its envelope.
MAX_FRAME_BYTES: Final = ENTRY_SIZE_BYTES_MAX + FRAME_ENVELOPE_BYTES
# Counted per entry in a read reply on top of its bytes (msgpack's bin header is at most 5).
REPLY_ENTRY_OVERHEAD_BYTES: Final = 8
# What one `EntriesRead` may carry (entries and their overhead): at least one entry of the
# largest size, so a reader never stalls on a large entry.
READ_REPLY_BYTES_MAX: Final = ENTRY_SIZE_BYTES_MAX + REPLY_ENTRY_OVERHEAD_BYTES
# The largest snapshot file the host sends in one `SnapshotRead`.
SNAPSHOT_READ_BYTES_MAX: Final = MAX_FRAME_BYTES - FRAME_ENVELOPE_BYTES

# A sealed node-to-node frame: one consensus message (or a smaller node message) in the
# node-to-node envelope (message kind, msgpack wrapping) and the channel's seal (header and
# GCM tag; `charter.enclave_app.channels` asserts its own overhead fits).
NODE_FRAME_ENVELOPE_BYTES: Final = 64 * 1024
NODE_FRAME_BYTES_MAX: Final = MAX_MESSAGE_BYTES + NODE_FRAME_ENVELOPE_BYTES

# The largest HTTP request body the enclave's runtime reads from a client: bodies beyond
# it are refused before they are read (endpoints may set lower limits).
REQUEST_BODY_BYTES_MAX: Final = 8 * 1024 * 1024
# The body of a forwarded request, or of its answer, in one node-to-node message: what a
# consensus message may take of a sealed node frame (the rest of the forward fits the envelope;
# `charter.enclave_app.node.messages` asserts that).
FORWARD_BODY_BYTES_MAX: Final = NODE_FRAME_BYTES_MAX - NODE_FRAME_ENVELOPE_BYTES

MAX_STRING_CHARS: Final = 64 * 1024
MAX_FDS_PER_FRAME: Final = 4
# Each queued fd is a dup held by this process: bound them well below the fd limit.
MAX_QUEUED_FDS: Final = 256
MAX_CONFIG_BYTES: Final = 1024 * 1024

# SEV-SNP endorsements the host may be asked for (`charter.ledger.snp`).
SNP_PRODUCTS: Final = ("Milan", "Genoa", "Turin")
SNP_CHIP_ID_BYTES: Final = 64
ENDORSEMENTS_SERVERS_MAX: Final = 16
# A VCEK is about 1.4 KiB and AMD's chain about 4.6 KiB (`ledger.snp.ENDORSEMENT_MAX_BYTES`).
ENDORSEMENT_PART_MAX_BYTES: Final = 16 * 1024
ENDORSEMENTS_URL_MAX_CHARS: Final = 2048
ENDORSEMENTS_ERROR_MAX_CHARS: Final = 2048

# Index blobs (CCF's LFS): one sealed bucket of an index strategy, kept by the host in
# `<workspace>/index_blobs/`. A bucket larger than this stays in enclave memory.
INDEX_BLOB_BYTES_MAX: Final = 16 * 1024 * 1024
# A strategy's name names a host folder: short, and only [a-z0-9_.-].
INDEX_STRATEGY_NAME_CHARS_MAX: Final = 64

# The relations the node relies on.
# A raft entry is a ledger entry: consensus must not accept one the ledger cannot hold.
assert CONSENSUS_ENTRY_BYTES_MAX <= ENTRY_SIZE_BYTES_MAX
# A consensus message carries at least one entry of the largest size.
assert CONSENSUS_ENTRY_BYTES_MAX < MAX_MESSAGE_BYTES
# A sealed node frame travels inside one control frame (SendToNode / NodeMessage).
assert NODE_FRAME_BYTES_MAX + 4096 <= MAX_FRAME_BYTES
# Any request a backup took from a client can be forwarded to the primary.
assert REQUEST_BODY_BYTES_MAX <= FORWARD_BODY_BYTES_MAX
# A read reply, with its envelope, fits one frame.
assert READ_REPLY_BYTES_MAX + 4096 <= MAX_FRAME_BYTES
# An index blob travels in one frame.
assert INDEX_BLOB_BYTES_MAX + 4096 <= MAX_FRAME_BYTES
# The length prefix can state every frame length.
assert 2 ** (8 * LENGTH_PREFIX.size) > MAX_FRAME_BYTES
