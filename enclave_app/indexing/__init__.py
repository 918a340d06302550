"""Indexing for apps (CCF's `ccf::indexing`): strategies an app installs at load time, fed
by the node with committed transactions, kept in the enclave up to a bound and beyond it
sealed and kept by the host (CCF's LFS).

    from charter.enclave_app.indexing import SeqnosByKey
    RECORDS_BY_ID = app.install_index(SeqnosByKey("records", key_codec=U64))
    ...
    seqnos = ctx.runtime.index(RECORDS_BY_ID).get_write_txs_in_range(42, 1, 5000)

May import: `charter.enclave_app.kv`, `charter.enclave_app.errors` and
`charter.enclave_app.interface` (never `charter.enclave_app.node`: the node feeds the
indexes, not the other way round; never `charter.host`).
"""

from charter.enclave_app.indexing.errors import (
    IndexBlobRejected,
    IndexingError,
    IndexNotReady,
    IndexRangeNotCovered,
    IndexRangeTooLarge,
)
from charter.enclave_app.indexing.indexer import Indexer
from charter.enclave_app.indexing.strategy import (
    IndexStrategy,
    LiveIndex,
    SeqnosByKey,
    SeqnosByKeyIndex,
)

__all__ = [
    "IndexBlobRejected",
    "IndexNotReady",
    "IndexRangeNotCovered",
    "IndexRangeTooLarge",
    "IndexStrategy",
    "Indexer",
    "IndexingError",
    "LiveIndex",
    "SeqnosByKey",
    "SeqnosByKeyIndex",
]
