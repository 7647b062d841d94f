"""
Tests for L{ai_agent.runtime}.
"""

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported

from ai_agent.runtime import CachingEndpointFactory


class CachingEndpointFactoryTests(SynchronousTestCase):
    """
    Upstream endpoints are built once per scheme, host and port.
    """

    def test_reused(self) -> None:
        """
        Two URLs on the same scheme, host and port share one endpoint; a
        different port or scheme gets its own, TLS-wrapped for https.
        """
        factory = CachingEndpointFactory(MemoryReactorClock(), 10.0)
        first = factory.endpointForURI(URI.fromBytes(b"http://h.example:8000/v1/a"))
        again = factory.endpointForURI(URI.fromBytes(b"http://h.example:8000/v1/b"))
        other = factory.endpointForURI(URI.fromBytes(b"http://h.example:8001/v1/a"))
        secure = factory.endpointForURI(URI.fromBytes(b"https://h.example:8000/v1/a"))
        self.assertIs(first, again)
        self.assertIsNot(first, other)
        self.assertIsInstance(first, HostnameEndpoint)
        self.assertNotIsInstance(secure, HostnameEndpoint)

    def test_unsupportedScheme(self) -> None:
        """
        A scheme other than http or https is refused.
        """
        factory = CachingEndpointFactory(MemoryReactorClock(), 10.0)
        self.assertRaises(
            SchemeNotSupported, factory.endpointForURI, URI.fromBytes(b"ftp://h.example/x")
        )
