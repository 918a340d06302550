"""SEV-SNP attestation verification, on a real Milan report and on reports we sign ourselves.

The real report (shared/snp-attestation, from a Milan CPU) proves the cryptography: its
signature, its VCEK chain up to AMD's pinned roots, and the TCB and chip-id cross-checks.
The policy checks (debug, VMPL, report data, measurement, host data, minimum TCB) need
reports with chosen fields, so those are signed by a test chain built here with the same
algorithms as AMD's and passed in as the trusted roots.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_data import SHARED

from charter.ledger import snp

SNP = SHARED / "snp-attestation"
MILAN_REPORT = bytes.fromhex((SNP / "milan" / "report.hex").read_text().strip())
MILAN_VCEK = (SNP / "milan" / "vcek.der").read_bytes()
MILAN_CHAIN = (SNP / "milan" / "ask_ark.pem").read_bytes()
TURIN_VCEK = (SNP / "turin" / "vcek.der").read_bytes()
MILAN_MEASUREMENT = MILAN_REPORT[0x90:0xC0].hex()
MILAN_REPORT_DATA = MILAN_REPORT[0x50:0x90]
MILAN_POLICY = snp.Policy(measurements={MILAN_MEASUREMENT})


def verify_milan(raw: bytes = MILAN_REPORT, **changes: object) -> snp.VerifiedReport:
    endorsements = changes.pop("endorsements", None) or snp.Endorsements.from_bytes(
        MILAN_VCEK, MILAN_CHAIN
    )
    assert isinstance(endorsements, snp.Endorsements)
    policy = changes.pop("policy", MILAN_POLICY)
    assert isinstance(policy, snp.Policy)
    return snp.verify_report(raw, endorsements, report_data=MILAN_REPORT_DATA, policy=policy)


def refused_check(call: Callable[[], object]) -> str:
    with pytest.raises(snp.SnpError) as caught:
        call()
    return caught.value.check


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


# --- the real Milan report ---------------------------------------------------------------


def test_the_real_milan_report_verifies_with_its_vcek_and_amds_pinned_milan_roots() -> None:
    verified = verify_milan()
    assert verified.product is snp.Product.MILAN
    assert verified.measurement == MILAN_MEASUREMENT
    assert verified.reported_tcb == snp.TcbVersion(bootloader=3, tee=0, snp=8, microcode=0x73)
    assert verified.cpuid_hex == "00a00f11"
    assert verified.report.version == 2


def test_the_real_report_verifies_without_a_supplied_chain_since_the_roots_are_pinned() -> None:
    assert verify_milan(endorsements=snp.Endorsements.from_bytes(MILAN_VCEK)).measurement


def signed_part_reason(offset: int) -> set[str]:
    if offset < 0x04 or 0x34 <= offset < 0x38:
        # version and signature algorithm: 2 becomes 3, a version we read, hence a signature
        return {"report_format", "report_signature"}
    if 0x48 <= offset < 0x4C:
        return {"signing_key", "report_signature"}  # flags (bits 2-4 name the key)
    if offset in (0x180, 0x181, 0x186, 0x187):
        return {"reported_tcb"}  # Milan's bootloader, tee, snp and microcode levels
    if 0x1A0 <= offset < 0x1E0:
        return {"chip_id"}
    return {"report_signature"}


def test_flipping_any_byte_of_the_signed_part_is_refused_with_the_fitting_reason() -> None:
    endorsements = snp.Endorsements.from_bytes(MILAN_VCEK, MILAN_CHAIN)
    for offset in range(snp.SIGNED_BYTES):
        check = refused_check(
            lambda offset=offset: verify_milan(
                flip(MILAN_REPORT, offset), endorsements=endorsements
            )
        )
        assert check in signed_part_reason(offset), (hex(offset), check)


@pytest.mark.parametrize("offset", [snp.SIGNED_BYTES, snp.SIGNED_BYTES + 71, 0x2E8, 0x2E8 + 71])
def test_flipping_a_byte_of_the_signature_is_refused(offset: int) -> None:
    assert refused_check(lambda: verify_milan(flip(MILAN_REPORT, offset))) == "report_signature"


def test_flipping_any_byte_of_the_vcek_is_refused() -> None:
    # Every byte: a flipped certificate either stops parsing, names another issuer, no longer
    # carries ASK's signature, or differs from its signed copy in an unsigned field.
    for offset in range(len(MILAN_VCEK)):
        try:
            endorsements = snp.Endorsements.from_bytes(flip(MILAN_VCEK, offset), MILAN_CHAIN)
        except snp.SnpError as error:
            assert error.check == "endorsements"
            continue
        check = refused_check(lambda e=endorsements: verify_milan(endorsements=e))
        assert check in {"vcek", "vcek_issuer", "vcek_tcb", "chip_id", "reported_tcb"}, (
            offset,
            check,
        )


def test_a_supplied_ask_that_is_not_amds_is_refused() -> None:
    ask_pem = MILAN_CHAIN.split(b"-----END CERTIFICATE-----")[0]
    ask_der = x509.load_pem_x509_certificate(ask_pem + b"-----END CERTIFICATE-----\n")
    forged = _forged_copy(ask_der)
    endorsements = snp.Endorsements(
        vcek=snp.Endorsements.from_bytes(MILAN_VCEK).vcek, chain=(forged,)
    )
    assert refused_check(lambda: verify_milan(endorsements=endorsements)) == "ask"


def test_a_vcek_for_another_chip_and_tcb_is_caught_by_the_tcb_cross_check() -> None:
    turin = snp.Endorsements.from_bytes(TURIN_VCEK)
    assert refused_check(lambda: verify_milan(endorsements=turin)) == "reported_tcb"


def test_the_turin_vcek_chains_to_amds_pinned_turin_roots() -> None:
    product, vcek = snp.verify_endorsements(snp.Endorsements.from_bytes(TURIN_VCEK))
    assert product is snp.Product.TURIN
    assert snp.vcek_tcb(vcek, product).microcode == 9


def test_a_report_that_does_not_bind_the_expected_data_is_refused() -> None:
    endorsements = snp.Endorsements.from_bytes(MILAN_VCEK)
    check = refused_check(
        lambda: snp.verify_report(
            MILAN_REPORT, endorsements, report_data=b"\x01" * 32, policy=MILAN_POLICY
        )
    )
    assert check == "report_data"


def test_a_measurement_outside_the_governed_set_is_refused() -> None:
    policy = snp.Policy(measurements={"00" * 48})
    assert refused_check(lambda: verify_milan(policy=policy)) == "measurement"


def test_host_data_outside_the_governed_set_is_refused() -> None:
    policy = snp.Policy(measurements={MILAN_MEASUREMENT}, host_data={"11" * 32})
    assert refused_check(lambda: verify_milan(policy=policy)) == "host_data"


def test_a_tcb_below_the_governed_minimum_for_its_cpu_is_refused() -> None:
    # The report's TCB is bootloader 3, tee 0, snp 8, microcode 0x73: ask for snp 9.
    above = snp.Policy(
        measurements={MILAN_MEASUREMENT}, minimum_tcb={"00a00f11": "7309000000000003"}
    )
    assert refused_check(lambda: verify_milan(policy=above)) == "minimum_tcb"
    equal = snp.Policy(
        measurements={MILAN_MEASUREMENT}, minimum_tcb={"00a00f11": "7308000000000003"}
    )
    assert verify_milan(policy=equal).product is snp.Product.MILAN
    other_cpu = snp.Policy(measurements={MILAN_MEASUREMENT}, minimum_tcb={"00a10f11": "ff" * 8})
    assert verify_milan(policy=other_cpu).product is snp.Product.MILAN


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=2 * snp.REPORT_BYTES))
def test_garbage_reports_are_refused_with_a_typed_error(raw: bytes) -> None:
    with pytest.raises(snp.SnpError):
        verify_milan(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), st.binary(max_size=4096))
def test_garbage_endorsements_are_refused_with_a_typed_error(vcek: bytes, chain: bytes) -> None:
    with pytest.raises(snp.SnpError):
        snp.Endorsements.from_bytes(vcek, chain)


# --- a test chain for the policy checks -------------------------------------------------

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
NOW = datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Charter tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    subject: str, issuer: str, key: object, signer: rsa.RSAPrivateKey, extensions: dict[str, bytes]
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
    )
    for oid, value in extensions.items():
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False
        )
    return builder.sign(signer, hashes.SHA384(), rsa_padding=PSS)


def _forged_copy(certificate: x509.Certificate) -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        x509.CertificateBuilder()
        .subject_name(certificate.subject)
        .issuer_name(certificate.issuer)
        .public_key(key.public_key())
        .serial_number(certificate.serial_number)
        .not_valid_before(certificate.not_valid_before_utc)
        .not_valid_after(certificate.not_valid_after_utc)
        .sign(key, hashes.SHA384(), rsa_padding=PSS)
    )


class SigningChain:
    """ARK → ASK (RSA-PSS) → VCEK (P-384) as AMD builds them, and reports it signs."""

    chip_id = bytes(range(64))
    tcb = snp.TcbVersion(bootloader=4, tee=1, snp=22, microcode=0xD3)

    def __init__(self) -> None:
        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.vcek_key = ec.generate_private_key(ec.SECP384R1())
        ark = _certificate("ARK-Milan", "ARK-Milan", ark_key.public_key(), ark_key, {})
        ask = _certificate("SEV-Milan", "ARK-Milan", ask_key.public_key(), ark_key, {})
        der_int = {
            "1.3.6.1.4.1.3704.1.3.1": self.tcb.bootloader,
            "1.3.6.1.4.1.3704.1.3.2": self.tcb.tee,
            "1.3.6.1.4.1.3704.1.3.3": self.tcb.snp,
            "1.3.6.1.4.1.3704.1.3.8": self.tcb.microcode,
        }
        extensions = {
            oid: b"\x02" + bytes([len(enc)]) + enc
            for oid, value in der_int.items()
            for enc in [value.to_bytes((value.bit_length() + 8) // 8, "big")]
        }
        extensions["1.3.6.1.4.1.3704.1.4"] = self.chip_id
        vcek = _certificate(
            "SEV-VCEK", "SEV-Milan", self.vcek_key.public_key(), ask_key, extensions
        )
        self.roots = snp.Roots(ask=ask, ark=ark)
        self.endorsements = snp.Endorsements(vcek=vcek)

    def report(
        self,
        *,
        policy: int = 0x30000,
        vmpl: int = 0,
        report_data: bytes = b"\x42" * 32,
        measurement: bytes = b"\x07" * 48,
        host_data: bytes = b"\x00" * 32,
        version: int = 3,
    ) -> bytes:
        raw = bytearray(snp.REPORT_BYTES)
        struct.pack_into("<IIQ", raw, 0, version, 0, policy)
        struct.pack_into("<II", raw, 0x30, vmpl, snp.ECDSA_P384_SHA384)
        raw[0x50:0x90] = report_data.ljust(64, b"\0")
        raw[0x90:0xC0] = measurement
        tcb = bytes(
            [self.tcb.bootloader, self.tcb.tee, 0, 0, 0, 0, self.tcb.snp, self.tcb.microcode]
        )
        raw[0x180:0x188] = tcb
        raw[0x188:0x18B] = bytes([0x19, 0x01, 0x01])  # family 19h, model 1, stepping 1
        raw[0xC0:0xE0] = host_data
        raw[0x1A0:0x1E0] = self.chip_id
        der = self.vcek_key.sign(bytes(raw[: snp.SIGNED_BYTES]), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        raw[snp.SIGNED_BYTES : snp.SIGNED_BYTES + 72] = r.to_bytes(72, "little")
        raw[snp.SIGNED_BYTES + 72 : snp.SIGNED_BYTES + 144] = s.to_bytes(72, "little")
        return bytes(raw)

    def verify(self, raw: bytes, policy: snp.Policy | None = None) -> snp.VerifiedReport:
        return snp.verify_report(
            raw,
            self.endorsements,
            report_data=b"\x42" * 32,
            policy=policy or snp.Policy(measurements={"07" * 48}),
            trusted_roots=lambda product: self.roots,
        )


@pytest.fixture(scope="module")
def chain() -> SigningChain:
    return SigningChain()


def test_a_well_formed_version_3_report_passes_every_policy_check(chain: SigningChain) -> None:
    verified = chain.verify(chain.report())
    assert verified.cpuid_hex == "00a00f11"
    assert verified.reported_tcb == chain.tcb


def test_a_report_whose_policy_allows_debugging_is_refused(chain: SigningChain) -> None:
    raw = chain.report(policy=0x30000 | snp.POLICY_DEBUG)
    assert refused_check(lambda: chain.verify(raw)) == "policy"


def test_a_report_from_a_vmpl_other_than_0_is_refused(chain: SigningChain) -> None:
    raw = chain.report(vmpl=2)
    assert refused_check(lambda: chain.verify(raw)) == "vmpl"
    relaxed = snp.Policy(measurements={"07" * 48}, require_vmpl0=False)
    assert chain.verify(raw, relaxed).report.vmpl == 2


def test_a_report_binding_another_key_is_refused(chain: SigningChain) -> None:
    raw = chain.report(report_data=b"\x43" * 32)
    assert refused_check(lambda: chain.verify(raw)) == "report_data"


def test_measurement_host_data_and_tcb_minimum_are_checked_on_signed_reports(
    chain: SigningChain,
) -> None:
    raw = chain.report(host_data=b"\x05" * 32)
    assert refused_check(lambda: chain.verify(raw, snp.Policy(measurements={"08" * 48}))) == (
        "measurement"
    )
    governed = snp.Policy(measurements={"07" * 48}, host_data={"06" * 32})
    assert refused_check(lambda: chain.verify(raw, governed)) == "host_data"
    minimum = snp.Policy(measurements={"07" * 48}, minimum_tcb={"00a00f11": "d417000000000104"})
    assert refused_check(lambda: chain.verify(raw, minimum)) == "minimum_tcb"
    met = snp.Policy(measurements={"07" * 48}, minimum_tcb={"00a00f11": "d316000000000104"})
    assert chain.verify(raw, met).host_data == "05" * 32


def test_a_vcek_signed_by_a_key_other_than_the_trusted_ask_is_refused(chain: SigningChain) -> None:
    raw = chain.report()
    with pytest.raises(snp.SnpError) as caught:
        snp.verify_report(
            raw,
            chain.endorsements,
            report_data=b"\x42" * 32,
            policy=snp.Policy(measurements={"07" * 48}),
        )
    assert caught.value.check == "vcek"
