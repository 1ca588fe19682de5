"""A reference OpenDSR processor on loopback (real HTTP), with fault injection, and a
callback receiver: what the demo and the tests talk to."""

from examples.partner.certs import TestCertificate, generate
from examples.partner.server import (
    DEFAULT_DOMAIN,
    CallbackAttempt,
    Faults,
    PartnerRequest,
    ReferencePartner,
)
from examples.partner.sink import CallbackSink, ReceivedCallback

__all__ = [
    "DEFAULT_DOMAIN",
    "CallbackAttempt",
    "CallbackSink",
    "Faults",
    "PartnerRequest",
    "ReceivedCallback",
    "ReferencePartner",
    "TestCertificate",
    "generate",
]
