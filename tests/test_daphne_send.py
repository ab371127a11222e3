"""shop/asgi.py's immediate WebSocket send under daphne: a frame leaves in the send() that makes it."""

import os
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import pytest

from shop.asgi import send_websocket_data_at_once

ROOT = Path(__file__).resolve().parent.parent
OPEN, CLOSING = 3, 4


class Transport:
    """The attributes of Twisted's plain TCP transport that the send looks at (Twisted is outside the project)."""

    TLS = False
    connected = 1
    _writeDisconnected = False

    def __init__(self, sock):
        self.socket = sock
        self.dataBuffer = b""
        self._tempDataBuffer = []


class Protocol:
    STATE_OPEN = OPEN

    def __init__(self, transport):
        self.transport = transport
        self.send_queue = deque()
        self.logOctets = False
        self.state = OPEN
        self.trafficStats = SimpleNamespace(outgoingOctetsWireLevel=0)
        self.buffered = []  # What went through Twisted's own (buffered) write instead.

    def twisted_send_data(self, data, sync=False, chopsize=None):
        self.buffered.append(data)


@pytest.fixture
def connected_pair():
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(1)
    yield ours, peer
    ours.close()
    peer.close()


def send_data():
    return send_websocket_data_at_once(Protocol.twisted_send_data)


def test_a_frame_is_on_the_socket_when_send_returns(connected_pair):
    """Before: Twisted only buffered it until the loop's next turn (issue 8: 0.6 ms of a push's 1.8)."""
    ours, peer = connected_pair
    protocol = Protocol(Transport(ours))

    send_data()(protocol, b"\x81\x05hello")
    send_data()(protocol, b"\x81\x02hi")

    assert peer.recv(100) == b"\x81\x05hello\x81\x02hi"
    assert protocol.buffered == []
    assert protocol.trafficStats.outgoingOctetsWireLevel == 11


@pytest.mark.parametrize(
    "situation",
    ["twisted_has_data_waiting", "twisted_has_a_chunk_waiting", "autobahn_queued", "closing", "tls", "lost"],
)
def test_anything_else_goes_through_twisted_in_order(connected_pair, situation):
    ours, peer = connected_pair
    transport = Transport(ours)
    protocol = Protocol(transport)
    if situation == "twisted_has_data_waiting":
        transport.dataBuffer = b"earlier"
    elif situation == "twisted_has_a_chunk_waiting":
        transport._tempDataBuffer = [b"earlier"]
    elif situation == "autobahn_queued":
        protocol.send_queue.append((b"earlier", True))
    elif situation == "closing":
        protocol.state = CLOSING
    elif situation == "tls":
        transport.TLS = True
    elif situation == "lost":
        transport.connected = 0

    send_data()(protocol, b"\x81\x05hello")

    assert protocol.buffered == [b"\x81\x05hello"]
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)


def test_what_the_kernel_does_not_take_goes_through_twisted(connected_pair):
    ours, _ = connected_pair
    taken = []

    class HalfSocket:
        def send(self, data):
            taken.append(bytes(data[:3]))
            return 3

    protocol = Protocol(Transport(HalfSocket()))
    send_data()(protocol, b"\x81\x05hello")

    assert taken == [b"\x81\x05h"]
    assert protocol.buffered == [b"ello"]


def test_a_broken_connection_is_left_to_twisted(connected_pair):
    ours, peer = connected_pair
    peer.close()
    protocol = Protocol(Transport(ours))

    send_data()(protocol, b"\x81\x05hello")  # EPIPE or ECONNRESET: Twisted finds it and closes.

    assert protocol.buffered == [b"\x81\x05hello"]


def test_twisteds_tcp_transport_has_what_the_send_reads():
    """The send reads private attributes of Twisted's transport, with defaults that turn it off:
    a rename in Twisted would only make every frame go the slow way. A real tcp.Server on an
    accepted 127.0.0.1 connection, as daphne's: idle, it is sent on at once; once Twisted holds
    data for it, it is not."""
    from twisted.internet import protocol, tcp
    from twisted.internet.testing import MemoryReactor

    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname(), timeout=1)
        accepted, address = listener.accept()
    reactor = MemoryReactor()  # Records what the transport registers; runs nothing.
    transport = tcp.Server(accepted, protocol.Protocol(), address, None, 1, reactor)
    try:
        assert (transport.dataBuffer, transport._tempDataBuffer) == (b"", [])
        assert (transport._writeDisconnected, transport.TLS, transport.connected) == (False, False, 1)
        assert transport.socket is accepted

        websocket = Protocol(transport)
        send_data()(websocket, b"\x81\x05hello")
        assert (peer.recv(100), websocket.buffered) == (b"\x81\x05hello", [])

        transport.write(b"earlier")  # Twisted buffers it until the reactor finds the socket writable.
        assert transport._tempDataBuffer == [b"earlier"]
        send_data()(websocket, b"\x81\x02hi")
        assert websocket.buffered == [b"\x81\x02hi"]
    finally:
        reactor.removeAll()
        accepted.close()
        peer.close()


def test_daphnes_websocket_protocol_sends_at_once_once_the_app_is_loaded():
    """As daphne loads it: its protocol module first, then the application (wrapped once)."""
    probe = (
        "import daphne.server, importlib, shop.asgi; importlib.reload(shop.asgi); "
        "from daphne.ws_protocol import WebSocketProtocol as P; "
        "print(P.sendData.sends_at_once, P.sendData.__wrapped__.__module__)"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "shop.settings"}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split()[-2:] == ["True", "autobahn.websocket.protocol"]
