"""The SDK's reading of certificate end dates, which `charter status` warns from."""

from __future__ import annotations

import datetime

from charter.sdk import CertificateExpiry

NOW = datetime.datetime(2026, 12, 6, tzinfo=datetime.UTC)


def test_only_certificates_ending_within_the_window_are_reported() -> None:
    expiry = CertificateExpiry(
        service=NOW + datetime.timedelta(days=29),
        nodes={"aa": NOW + datetime.timedelta(days=31), "bb": NOW - datetime.timedelta(hours=1)},
    )
    assert expiry.expiring(NOW, 30) == [
        ("service", NOW + datetime.timedelta(days=29)),
        ("node bb", NOW - datetime.timedelta(hours=1)),
    ]
    assert expiry.expiring(NOW, 0) == [("node bb", NOW - datetime.timedelta(hours=1))]
