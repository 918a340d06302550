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
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding

from charter.enclave_app.interface import EndorsementsFetched, FetchEndorsements
from charter.enclave_app.platform import SEAL_NONCE_BYTES, SEALED_MAX_BYTES, PlatformError
from charter.ledger import snp
from charter.ledger.quote import SNP_FORMAT, Evidence

LOG = logging.getLogger(__name__)

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
SEV_GUEST_DEVICE = Path("/dev/sev-guest")
CPUINFO = Path("/proc/cpuinfo")
CPUINFO_MAX_BYTES = 4 * 1024 * 1024
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


def cpuid_of_cpuinfo(path: Path = CPUINFO) -> str:
    """CPUID leaf-1 EAX (hex) of the first CPU in /proc/cpuinfo, for reports (version 2) that
    do not carry it. Under SEV-SNP the firmware's CPUID table vets these values; the product
    line chosen from them only selects which endorsements to fetch, and a wrong one fails
    verification."""
    try:
        with path.open("rb") as handle:
            text = handle.read(CPUINFO_MAX_BYTES).decode(errors="replace")
    except OSError as exc:
        raise PlatformError(f"cannot read {path}: {exc.strerror}") from None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    try:
        family, model, stepping = (int(fields[k]) for k in ("cpu family", "model", "stepping"))
    except (KeyError, ValueError):
        raise PlatformError(f"{path} names no cpu family, model and stepping") from None
    return snp.cpuid_hex(family, model, stepping)


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
    """Attestation and sealing backed by the SEV-SNP firmware of the VM this process runs in.

    Endorsements come, first found first used, from the operator's file, from the certificate
    table the host provisioned with the report, or from the host's endorsements servers
    (`obtain_endorsements`, checked here against this VM's own report before use).
    """

    name = "snp"
    is_secure = True

    def __init__(
        self,
        *,
        tsm: TsmReport | None = None,
        device: Path = SEV_GUEST_DEVICE,
        endorsements_file: Path | None = None,
        cpuinfo: Path = CPUINFO,
    ) -> None:
        self.tsm = tsm or TsmReport()
        self.device = device
        self.endorsements_file = endorsements_file
        self.cpuinfo = cpuinfo
        self.fetched_endorsements: bytes | None = None
        self._measurement: str | None = None

    @property
    def measurement(self) -> str:
        """The launch measurement of this VM, read from a report of its own."""
        if self._measurement is None:
            raw, _ = self._raw_report(bytes(REPORT_DATA_BYTES))
            self._measurement = snp.parse_report(raw).measurement.hex()
        return self._measurement

    def _raw_report(self, report_data: bytes) -> tuple[bytes, bytes]:
        """The firmware's signed report binding `report_data`, and the host's certificate
        table (empty when it provisioned none)."""
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
        return raw[: snp.REPORT_BYTES], table

    def report(self, report_data: bytes) -> Evidence:
        """A signed report binding `report_data` (zero-padded to 64 bytes), with endorsements."""
        raw, table = self._raw_report(report_data)
        if self.endorsements_file is not None:
            endorsements = self.endorsements_file.read_bytes()
        elif table:
            endorsements = endorsements_from_table(table)
        elif self.fetched_endorsements is not None:
            endorsements = self.fetched_endorsements
        else:
            raise PlatformError(
                "no VCEK: the host provisioned no certificate table; set snp.endorsements_file "
                "or snp.endorsements_servers"
            )
        return Evidence(format=SNP_FORMAT, quote=raw, endorsements=endorsements)

    def evidence(self, public_key_der: bytes) -> Evidence:
        return self.report(hashlib.sha256(public_key_der).digest())

    def endorsements_request(self) -> tuple[snp.Product, bytes, int] | None:
        """(product line, chip id, reported TCB) to fetch endorsements for, or None when the
        operator's file or the host's certificate table provides them."""
        if self.endorsements_file is not None or self.fetched_endorsements is not None:
            return None
        raw, table = self._raw_report(bytes(REPORT_DATA_BYTES))
        if table:
            return None
        report = snp.parse_report(raw)
        if report.cpuid is not None:
            product = snp.product_of_cpuid(snp.cpuid_hex(*report.cpuid))
        else:
            product = snp.product_of_cpuid(cpuid_of_cpuinfo(self.cpuinfo))
        return product, report.chip_id, report.reported_tcb_raw

    def use_endorsements(self, vcek: bytes, chain_pem: bytes) -> snp.Product:
        """Adopt fetched endorsements once they are shown to be AMD's for this chip and TCB:
        chained to the pinned roots, and verifying this VM's own report. Raises `SnpError`."""
        endorsements = snp.Endorsements.from_bytes(vcek, chain_pem)
        raw, _ = self._raw_report(bytes(REPORT_DATA_BYTES))
        _, product, _ = snp.verify_signature(raw, endorsements)
        self.fetched_endorsements = b"".join(
            certificate.public_bytes(Encoding.PEM)
            for certificate in (endorsements.vcek, *endorsements.chain)
        )
        return product

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


async def obtain_endorsements(
    platform: SnpPlatform,
    server_count: int,
    ask_host: Callable[[FetchEndorsements], Awaitable[EndorsementsFetched]],
) -> None:
    """Have the host fetch this VM's endorsements when nothing else provides them.

    Each answer is checked (`SnpPlatform.use_endorsements`); a refused one sends the host to
    the next server. Raises `PlatformError` naming every server's failure when none served
    endorsements this enclave accepts.
    """
    request = platform.endorsements_request()
    if request is None:
        return
    product, chip_id, reported_tcb = request
    if server_count == 0:
        raise PlatformError(
            "no VCEK: the host provisioned no certificate table, and neither "
            "snp.endorsements_file nor snp.endorsements_servers is set"
        )
    refusals: list[str] = []
    first = 0
    while first < server_count:
        reply = await ask_host(
            FetchEndorsements(
                request_id=0,
                product=product.value,
                chip_id=chip_id,
                reported_tcb=reported_tcb,
                first_server=first,
            )
        )
        if reply.error is not None:
            refusals.append(reply.error)
            break
        if reply.server < first or reply.server >= server_count:
            refusals.append(f"the host answered from server {reply.server}, not {first} or later")
            break
        try:
            platform.use_endorsements(reply.vcek, reply.chain)
        except snp.SnpError as exc:
            LOG.warning("event=snp_endorsements_refused url=%s reason=%s", reply.url, exc)
            refusals.append(f"{reply.url} served endorsements that fail {exc}")
            first = reply.server + 1
            continue
        LOG.info("event=snp_endorsements_fetched url=%s", reply.url)
        return
    raise PlatformError("no acceptable SEV-SNP endorsements: " + "; ".join(refusals))
