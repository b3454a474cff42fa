"""fedvc.call_auth: a call is served only with a trusted key's fresh signature of it."""

from __future__ import annotations

import pytest

from fedvc.call_auth import (
    KEY,
    MAX_SKEW,
    SIGNATURE,
    TIME,
    CallRejected,
    authenticate,
    credentials,
)
from fedvc.round import UpdateRejected
from fedvc.signing import SigningKey
from fedvc.trust import TrustStore

CLIENT = SigningKey.from_seed(bytes([1]) * 32)
OTHER = SigningKey.from_seed(bytes([2]) * 32)
TRUST = TrustStore([CLIENT.public_key])
NOW = 1_800_000_000.0


def check(metadata: object, method: str = "Submit", now: float = NOW) -> object:
    return authenticate(metadata, method, TRUST, now)  # type: ignore[arg-type]


def test_a_signed_call_names_its_key() -> None:
    assert check(credentials(CLIENT, "Submit", NOW)) == CLIENT.public_key
    by_id = TrustStore(key_ids=[CLIENT.key_id])  # a key trusted by its id alone
    metadata = credentials(CLIENT, "PutObjects", NOW)
    assert authenticate(metadata, "PutObjects", by_id, NOW) == CLIENT.public_key
    unrelated = (("user-agent", "grpc-python"), *metadata)  # other metadata is ignored
    assert authenticate(unrelated, "PutObjects", by_id, NOW) == CLIENT.public_key


@pytest.mark.parametrize("skew", [-MAX_SKEW, MAX_SKEW])
def test_the_clock_may_differ_by_max_skew_either_way(skew: float) -> None:
    assert check(credentials(CLIENT, "Submit", NOW + skew)) == CLIENT.public_key
    late = credentials(CLIENT, "Submit", NOW + skew + (1 if skew > 0 else -1))
    with pytest.raises(CallRejected, match="clock right"):
        check(late)


def test_missing_or_malformed_credentials_are_named() -> None:
    good = dict(credentials(CLIENT, "Submit", NOW))
    for absent in (KEY, TIME, SIGNATURE):
        partial = [(k, v) for k, v in good.items() if k != absent]
        with pytest.raises(CallRejected, match=f"carries no {absent} metadata"):
            check(partial)
    bad = {
        KEY: ("abc", "is not a public key"),
        TIME: ("12a", "whole seconds"),
        SIGNATURE: ("zz", "is not key"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(CallRejected, match=message):
            check({**good, key: value}.items())
    with pytest.raises(CallRejected, match="whole seconds"):
        check({**good, TIME: "9" * 40}.items())


def test_a_signature_holds_for_one_method_one_key_and_one_time() -> None:
    with pytest.raises(CallRejected, match=f"is not key {CLIENT.key_id}'s signature"):
        check(credentials(CLIENT, "NextRound", NOW), method="PutObjects")
    swapped = dict(credentials(CLIENT, "Submit", NOW))
    swapped[SIGNATURE] = dict(credentials(OTHER, "Submit", NOW))[SIGNATURE]
    with pytest.raises(CallRejected, match="is not key"):
        check(swapped.items())
    moved = dict(credentials(CLIENT, "Submit", NOW))
    moved[TIME] = str(int(NOW) + 1)
    with pytest.raises(CallRejected, match="is not key"):
        check(moved.items())


def test_a_valid_signature_by_an_untrusted_key_is_an_unknown_key() -> None:
    with pytest.raises(UpdateRejected, match="ask the operator") as caught:
        check(credentials(OTHER, "Submit", NOW))
    assert caught.value.reason == "unknown_key"
