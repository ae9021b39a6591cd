"""Simulators of the outside world (FaR, mailbox operators), real network services on loopback, used by the
sandbox environment and the tests. Never used in production."""
