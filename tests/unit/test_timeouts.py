"""Waits of the agent against the server's: a shorter one turns the server's answer into silence."""

from __future__ import annotations

import corp_error_agent as agent
from corp_error_server import storage_postgres


def test_status_outwaits_the_server_waiting_for_its_database():
    # with PostgreSQL down the server answers 503 after its pool wait; `status` must still hear it
    assert agent._STATUS_TIMEOUT > storage_postgres._POOL_WAIT + 1.0
