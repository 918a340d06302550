"""The `snp` platform: attestation and sealing inside an AMD SEV-SNP confidential VM.

Reports come from the guest kernel. The first choice is Linux's configfs-tsm interface
(Documentation/ABI/testing/configfs-tsm, kernel 6.7 and later): make a directory under
`/sys/kernel/config/tsm/report`, write the 64 bytes the report must bind to its `inblob`,
read the signed report from `outblob` (and, where the host provisioned them, the VCEK and its
chain from `auxblob` as a GUID-keyed certificate table), and check that `generation` did not
move in between (another writer would have changed the report under us). Where configfs-tsm
is missing, the `/dev/sev-guest` character device answers the `SNP_GET_REPORT` ioctl
(include/uapi/linux/sev-guest.h). The sealing key is the firmware's derived key
(`SNP_GET_DERIVED_KEY`), mixed with the launch measurement, so only the same code on the same
chip can unseal.

None of this has run on SNP hardware here: the configfs path is tested against a directory
that behaves as configfs-tsm does, fed with a real Milan report; the ioctl path follows the
kernel's header and is exercised only on a real guest.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import ssl
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from charter.enclave_app.platform import (
    SEAL_NONCE_BYTES,
    SEALED_MAX_BYTES,
    Evidence,
    PlatformError,
)
from charter.ledger import snp

LOG = logging.getLogger(__name__)

SNP_FORMAT = "AMD_SEV_SNP_v1"  # CCF's quote format name
TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
SEV_GUEST_DEVICE = Path("/dev/sev-guest")
REPORT_DATA_BYTES = 64
AUXBLOB_MAX_BYTES = 64 * 1024
# GUIDs of the certificate table the host attaches to an extended report (GHCB spec 56421).
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
CERT_TABLE_ENTRY_BYTES = 24  # GUID (16), offset (4), length (4)


def parse_certificate_table(table: bytes) -> dict[uuid.UUID, bytes]:
    """The host's certificate table: entries (GUID, offset, length) ended by a zero GUID."""
    if len(table) > AUXBLOB_MAX_BYTES:
        raise PlatformError(f"certificate table over {AUXBLOB_MAX_BYTES} bytes")
    found: dict[uuid.UUID, bytes] = {}
    for start in range(0, len(table) - CERT_TABLE_ENTRY_BYTES + 1, CERT_TABLE_ENTRY_BYTES):
        entry = table[start : start + CERT_TABLE_ENTRY_BYTES]
        guid = uuid.UUID(bytes_le=entry[:16])
        if guid.int == 0:
            return found
        offset = int.from_bytes(entry[16:20], "little")
        length = int.from_bytes(entry[20:24], "little")
        if offset + length > len(table):
            raise PlatformError("certificate table entry points outside the table")
        found[guid] = table[offset : offset + length]
    raise PlatformError("certificate table has no terminating entry")


def endorsements_from_table(table: bytes) -> bytes:
    """VCEK, ASK and ARK (DER in the table) as one PEM bundle, VCEK first."""
    certificates = parse_certificate_table(table)
    if VCEK_GUID not in certificates:
        raise PlatformError("the host's certificate table has no VCEK")
    # Wrapped as PEM without parsing: the verifier parses and checks every certificate.
    return b"".join(
        ssl.DER_cert_to_PEM_cert(certificates[guid]).encode()
        for guid in (VCEK_GUID, ASK_GUID, ARK_GUID)
        if guid in certificates
    )


class TsmReport:
    """One report request through configfs-tsm, in its own directory under `root`."""

    def __init__(self, root: Path = TSM_REPORT_ROOT) -> None:
        self.root = root

    def available(self) -> bool:
        return self.root.is_dir()

    def get(self, report_data: bytes) -> tuple[bytes, bytes]:
        if len(report_data) != REPORT_DATA_BYTES:
            raise PlatformError(f"report data must be {REPORT_DATA_BYTES} bytes")
        entry = self.root / f"charter-{os.getpid()}"
        entry.mkdir(exist_ok=True)
        provider = (entry / "provider").read_text().strip()
        if provider != "sev_guest":
            raise PlatformError(f"configfs-tsm provider is {provider!r}, not sev_guest")
        (entry / "inblob").write_bytes(report_data)
        before = (entry / "generation").read_text().strip()
        report = (entry / "outblob").read_bytes()
        auxblob = entry / "auxblob"
        table = auxblob.read_bytes() if auxblob.exists() else b""
        after = (entry / "generation").read_text().strip()
        if before != after:
            raise PlatformError("configfs-tsm report changed while it was read (concurrent writer)")
        return report, table


# -- /dev/sev-guest (include/uapi/linux/sev-guest.h) ------------------------------------------


class _ReportRequest(ctypes.Structure):
    _fields_ = [
        ("user_data", ctypes.c_uint8 * 64),
        ("vmpl", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint8 * 28),
    ]


class _ReportResponse(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint8 * 4000)]


class _DerivedKeyRequest(ctypes.Structure):
    _fields_ = [
        ("root_key_select", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint32),
        ("guest_field_select", ctypes.c_uint64),
        ("vmpl", ctypes.c_uint32),
        ("guest_svn", ctypes.c_uint32),
        ("tcb_version", ctypes.c_uint64),
    ]


class _DerivedKeyResponse(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint8 * 64)]


class _GuestRequest(ctypes.Structure):
    _fields_ = [
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    ]


def _iowr(number: int, size: int) -> int:
    # _IOWR('S', number, struct snp_guest_request_ioctl) on x86-64.
    return (3 << 30) | (size << 16) | (ord("S") << 8) | number


SNP_GET_REPORT = _iowr(0x0, ctypes.sizeof(_GuestRequest))
SNP_GET_DERIVED_KEY = _iowr(0x1, ctypes.sizeof(_GuestRequest))
# GUEST_FIELD_SELECT: mix the launch measurement (bit 3) and guest policy (bit 0) into the key.
FIELD_SELECT_POLICY_AND_MEASUREMENT = (1 << 3) | (1 << 0)
# MSG_REPORT_RSP and MSG_KEY_RSP start with status (4) and reserved bytes before the payload.
REPORT_RESPONSE_HEADER_BYTES = 32
KEY_RESPONSE_HEADER_BYTES = 32


def _guest_ioctl(
    device: Path, command: int, request: ctypes.Structure, response: ctypes.Structure
) -> None:
    call = _GuestRequest(
        msg_version=1,
        req_data=ctypes.addressof(request),
        resp_data=ctypes.addressof(response),
    )
    with device.open("rb+", buffering=0) as handle:
        try:
            fcntl.ioctl(handle.fileno(), command, call)
        except OSError as exc:
            raise PlatformError(
                f"{device} refused the request: {exc.strerror} (exitinfo2 {call.exitinfo2:#x})"
            ) from None
    status = int.from_bytes(bytes(response)[:4], "little")
    if status != 0:
        raise PlatformError(f"SNP firmware answered status {status:#x}")


class SnpPlatform:
    """Attestation and sealing backed by the SEV-SNP firmware of the VM this process runs in."""

    name = "snp"
    is_secure = True

    def __init__(
        self,
        *,
        tsm: TsmReport | None = None,
        device: Path = SEV_GUEST_DEVICE,
        endorsements_file: Path | None = None,
    ) -> None:
        self.tsm = tsm or TsmReport()
        self.device = device
        self.endorsements_file = endorsements_file
        self._measurement: str | None = None

    @property
    def measurement(self) -> str:
        """The launch measurement of this VM, read from a report of its own."""
        if self._measurement is None:
            report = snp.parse_report(self.report(bytes(REPORT_DATA_BYTES)).quote)
            self._measurement = report.measurement.hex()
        return self._measurement

    def report(self, report_data: bytes) -> Evidence:
        """A signed report binding `report_data` (zero-padded to 64 bytes), with endorsements."""
        if len(report_data) > REPORT_DATA_BYTES:
            raise PlatformError(f"report data over {REPORT_DATA_BYTES} bytes")
        padded = report_data.ljust(REPORT_DATA_BYTES, b"\0")
        if self.tsm.available():
            raw, table = self.tsm.get(padded)
        elif self.device.exists():
            raw, table = self._ioctl_report(padded), b""
        else:
            raise PlatformError(
                f"no SEV-SNP guest interface: neither {self.tsm.root} nor {self.device}"
            )
        if len(raw) < snp.REPORT_BYTES:
            raise PlatformError(f"the firmware returned {len(raw)} bytes, not a report")
        raw = raw[: snp.REPORT_BYTES]
        if self.endorsements_file is not None:
            endorsements = self.endorsements_file.read_bytes()
        elif table:
            endorsements = endorsements_from_table(table)
        else:
            raise PlatformError(
                "no VCEK: the host provisioned no certificate table; set an endorsements file"
            )
        return Evidence(format=SNP_FORMAT, quote=raw, endorsements=endorsements)

    def evidence(self, public_key_der: bytes) -> Evidence:
        return self.report(hashlib.sha256(public_key_der).digest())

    def _ioctl_report(self, report_data: bytes) -> bytes:
        request = _ReportRequest()
        ctypes.memmove(request.user_data, report_data, REPORT_DATA_BYTES)
        response = _ReportResponse()
        _guest_ioctl(self.device, SNP_GET_REPORT, request, response)
        body = bytes(response)
        size = int.from_bytes(body[4:8], "little")
        return body[REPORT_RESPONSE_HEADER_BYTES : REPORT_RESPONSE_HEADER_BYTES + size]

    def _sealing_key(self) -> bytes:
        request = _DerivedKeyRequest(
            root_key_select=0, guest_field_select=FIELD_SELECT_POLICY_AND_MEASUREMENT
        )
        response = _DerivedKeyResponse()
        _guest_ioctl(self.device, SNP_GET_DERIVED_KEY, request, response)
        return bytes(response)[KEY_RESPONSE_HEADER_BYTES : KEY_RESPONSE_HEADER_BYTES + 32]

    def seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(SEAL_NONCE_BYTES)
        return nonce + AESGCM(self._sealing_key()).encrypt(nonce, plaintext, SNP_FORMAT.encode())

    def unseal(self, blob: bytes) -> bytes:
        if not SEAL_NONCE_BYTES + 16 <= len(blob) <= SEALED_MAX_BYTES:
            raise PlatformError("sealed blob has an impossible size")
        try:
            return AESGCM(self._sealing_key()).decrypt(
                blob[:SEAL_NONCE_BYTES], blob[SEAL_NONCE_BYTES:], SNP_FORMAT.encode()
            )
        except Exception:
            raise PlatformError(
                "cannot unseal: sealed by another VM, code or chip, or damaged"
            ) from None


def verify_snp_evidence(
    evidence: Evidence, *, report_data: bytes, policy: snp.Policy
) -> snp.VerifiedReport:
    """Check another node's SNP evidence (pure; the enclave trusts nothing the host added)."""
    if evidence.format != SNP_FORMAT:
        raise snp.SnpError("report_format", f"evidence format {evidence.format!r} is not SNP")
    pem = evidence.endorsements
    marker = b"-----END CERTIFICATE-----"
    cut = pem.find(marker)
    if cut < 0:
        raise snp.SnpError("endorsements", "no VCEK certificate in the endorsements")
    vcek, chain = pem[: cut + len(marker)], pem[cut + len(marker) :].strip()
    endorsements = snp.Endorsements.from_bytes(vcek, chain)
    return snp.verify_report(evidence.quote, endorsements, report_data=report_data, policy=policy)
