"""The host's index blob folder (host/index_blobs.py): frames handled in order, answers for
every fetch, the folder emptied at start."""

from __future__ import annotations

import asyncio
from pathlib import Path

from charter.enclave_app import interface as itf
from charter.host.index_blobs import INDEX_BLOBS_DIR_NAME, IndexBlobs


def test_a_fetch_after_a_store_sees_it_and_a_missing_blob_answers_none(tmp_path: Path) -> None:
    replies: list[itf.Frame] = []
    blobs = IndexBlobs(tmp_path, replies.append)
    blobs.reset()

    async def go() -> None:
        await blobs.submit(itf.IndexBlobStore(strategy="s.k", bucket=3, blob=b"one"))
        await blobs.submit(itf.IndexBlobFetch(request_id=1, strategy="s.k", bucket=3))
        await blobs.submit(itf.IndexBlobStore(strategy="s.k", bucket=3, blob=b"two"))
        await blobs.submit(itf.IndexBlobFetch(request_id=2, strategy="s.k", bucket=3))
        await blobs.submit(itf.IndexBlobFetch(request_id=3, strategy="s.k", bucket=4))
        for _ in range(200):
            if len(replies) == 3:
                break
            await asyncio.sleep(0.01)
        await blobs.close()

    asyncio.run(go())
    assert replies == [
        itf.IndexBlobFetched(request_id=1, strategy="s.k", bucket=3, blob=b"one"),
        itf.IndexBlobFetched(request_id=2, strategy="s.k", bucket=3, blob=b"two"),
        itf.IndexBlobFetched(request_id=3, strategy="s.k", bucket=4, blob=None),
    ]
    assert (tmp_path / INDEX_BLOBS_DIR_NAME / "s.k" / "3.blob").read_bytes() == b"two"


def test_the_folder_is_emptied_when_the_host_starts(tmp_path: Path) -> None:
    old = tmp_path / INDEX_BLOBS_DIR_NAME / "s" / "1.blob"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"sealed under a key that died with the last enclave")
    IndexBlobs(tmp_path, lambda frame: None).reset()
    assert (tmp_path / INDEX_BLOBS_DIR_NAME).is_dir()
    assert not old.exists()


def test_an_oversized_file_is_answered_as_missing(tmp_path: Path) -> None:
    blobs = IndexBlobs(tmp_path, lambda frame: None)
    blobs.reset()
    path = blobs.path("s", 9)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\0" * (itf.INDEX_BLOB_BYTES_MAX + 1))
    assert blobs.fetch(itf.IndexBlobFetch(request_id=1, strategy="s", bucket=9)) is None
