"""Fixtures of the node tests: the PACS (Orthanc, else pynetdicom's storage SCP, said in one printed line), the
port the node is registered on, its log lines and in-process nodes.

Orthanc is the Debian package ``orthanc`` (``make test`` installs it where it may: Testing/tools/ensure_orthanc.sh);
it is started here on loopback with a generated configuration and stopped at the end of the session.
``LIVERTUMOR_PACS_BACKEND=pynetdicom`` forces the fallback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from node_helpers import NODE_AET, NODE_LOGGER, QUIET_S, KnownLabels, LogLines, free_port, orthanc_binary

from LiverTumorSegLib.node.server import Node


@pytest.fixture(scope="session")
def node_port() -> int:
    """The port of every node that works with the PACS (registered there as modality "node")."""
    return free_port()


@pytest.fixture(scope="session")
def pacs(request, tmp_path_factory, node_port):
    """A running PACS that knows the node (NODE_AET@127.0.0.1:node_port): Orthanc, else pynetdicom."""
    from pacs_backends import OrthancPacs, PynetdicomPacs

    binary, why = orthanc_binary()
    folder = tmp_path_factory.mktemp("pacs")
    server = PynetdicomPacs(folder, NODE_AET, node_port) if binary is None else OrthancPacs(binary, folder, NODE_AET,
                                                                                             node_port)
    if binary is None:  # said once, whatever the capture settings
        with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
            print(f"\nPACS tests run against pynetdicom's storage SCP, not Orthanc: {why}", flush=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def log():
    """The node's log lines of this test."""
    handler = LogLines()
    logger = logging.getLogger(NODE_LOGGER)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def known_labels() -> KnownLabels:
    return KnownLabels()


@pytest.fixture
def start_node(pacs, node_port, tmp_path, known_labels):
    """Start an in-process node on the registered port, sending to the PACS (stand-in segment step unless given);
    stopped at teardown."""
    nodes: list[Node] = []

    def start(segment_fn=None, work: Path | None = None, **options) -> Node:
        options = {"retry_initial_s": 0.2, "retry_max_s": 1.0, "quiet_s": QUIET_S, **options}
        node = Node(NODE_AET, node_port, f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}", work or tmp_path / "work",
                    segment_fn or known_labels, bind="127.0.0.1", **options)
        nodes.append(node.start())
        return node

    yield start
    for node in nodes:
        node.stop()
