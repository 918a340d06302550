"""The `snp` platform's plumbing, against a directory that behaves as configfs-tsm does.

configfs-tsm produces `outblob` when it is read, from what was written to `inblob`; here a
FIFO served by a thread does the same with the real Milan report in shared/, and `auxblob`
holds the host's certificate table (GUID, offset, length entries) with the real VCEK, ASK
and ARK. The evidence the platform assembles must then verify with AMD's pinned roots.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from shared_data import SHARED

from charter.enclave_app import snp_platform
from charter.enclave_app.platform import PlatformError
from charter.ledger import quote, snp

SNP = SHARED / "snp-attestation"
REPORT = bytes.fromhex((SNP / "milan" / "report.hex").read_text().strip())
REPORT_DATA = REPORT[0x50:0x90]
VCEK_DER = (SNP / "milan" / "vcek.der").read_bytes()
ASK, ARK = x509.load_pem_x509_certificates((SNP / "milan" / "ask_ark.pem").read_bytes())
POLICY = snp.Policy(measurements={REPORT[0x90:0xC0].hex()})


def certificate_table(entries: list[tuple[uuid.UUID, bytes]]) -> bytes:
    header_bytes = snp_platform.CERT_TABLE_ENTRY_BYTES * (len(entries) + 1)
    header, body = b"", b""
    for guid, der in entries:
        offset = header_bytes + len(body)
        header += guid.bytes_le + offset.to_bytes(4, "little") + len(der).to_bytes(4, "little")
        body += der
    return header + bytes(snp_platform.CERT_TABLE_ENTRY_BYTES) + body


class FakeTsm:
    """A configfs-tsm report directory: outblob is computed from inblob when read."""

    def __init__(self, root: Path, table: bytes) -> None:
        self.root = root
        self.entry = root / f"charter-{os.getpid()}"
        self.entry.mkdir(parents=True)
        (self.entry / "provider").write_text("sev_guest\n")
        (self.entry / "generation").write_text("1\n")
        (self.entry / "inblob").write_bytes(b"")
        (self.entry / "auxblob").write_bytes(table)
        os.mkfifo(self.entry / "outblob")
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with (self.entry / "outblob").open("wb") as out:  # blocks until the platform reads
            inblob = (self.entry / "inblob").read_bytes()
            self.requests.append(inblob)
            # The firmware signs whatever it is given; this fake only has one real report.
            out.write(REPORT if inblob == REPORT_DATA else bytes(snp.REPORT_BYTES))


@pytest.fixture
def tsm(tmp_path: Path) -> Iterator[FakeTsm]:
    table = certificate_table(
        [
            (snp_platform.VCEK_GUID, VCEK_DER),
            (snp_platform.ASK_GUID, ASK.public_bytes(Encoding.DER)),
            (snp_platform.ARK_GUID, ARK.public_bytes(Encoding.DER)),
        ]
    )
    fake = FakeTsm(tmp_path / "tsm" / "report", table)
    yield fake
    fake.thread.join(timeout=5)


def test_snp_evidence_from_configfs_tsm_verifies_with_amds_pinned_roots(tsm: FakeTsm) -> None:
    platform = snp_platform.SnpPlatform(tsm=snp_platform.TsmReport(tsm.root))
    evidence = platform.report(REPORT_DATA)
    assert tsm.requests == [REPORT_DATA]
    assert evidence.format == "AMD_SEV_SNP_v1"
    assert evidence.quote == REPORT
    assert evidence.endorsements.count(b"BEGIN CERTIFICATE") == 3
    verified = quote.verify_evidence(
        evidence, report_data=REPORT_DATA, virtual_measurements=(), snp_policy=POLICY
    )
    assert verified.snp is not None and verified.snp.product is snp.Product.MILAN


def test_evidence_for_other_report_data_is_refused_by_the_verifier(tsm: FakeTsm) -> None:
    platform = snp_platform.SnpPlatform(tsm=snp_platform.TsmReport(tsm.root))
    evidence = platform.report(REPORT_DATA)
    with pytest.raises(snp.SnpError) as caught:
        quote.verify_evidence(
            evidence, report_data=b"\x01" * 32, virtual_measurements=(), snp_policy=POLICY
        )
    assert caught.value.check == "report_data"


def test_a_configfs_entry_from_another_provider_is_refused(tsm: FakeTsm) -> None:
    (tsm.entry / "provider").write_text("tdx_guest\n")
    platform = snp_platform.SnpPlatform(tsm=snp_platform.TsmReport(tsm.root))
    with pytest.raises(PlatformError, match="tdx_guest"):
        platform.report(REPORT_DATA)
    with (tsm.entry / "outblob").open("rb") as unblock:  # let the fake's thread finish
        unblock.read()


def test_no_guest_interface_is_a_clear_error(tmp_path: Path) -> None:
    platform = snp_platform.SnpPlatform(
        tsm=snp_platform.TsmReport(tmp_path / "none"), device=tmp_path / "sev-guest"
    )
    with pytest.raises(PlatformError, match="no SEV-SNP guest interface"):
        platform.report(REPORT_DATA)


def test_a_certificate_table_pointing_outside_itself_is_refused() -> None:
    table = bytearray(certificate_table([(snp_platform.VCEK_GUID, VCEK_DER)]))
    table[20:24] = (len(table) * 2).to_bytes(4, "little")
    with pytest.raises(PlatformError, match="outside"):
        snp_platform.parse_certificate_table(bytes(table))
    with pytest.raises(PlatformError, match="terminating"):
        snp_platform.parse_certificate_table(b"\x01" * 16 + bytes(8))
    with pytest.raises(PlatformError, match="no VCEK"):
        snp_platform.endorsements_from_table(bytes(snp_platform.CERT_TABLE_ENTRY_BYTES))
