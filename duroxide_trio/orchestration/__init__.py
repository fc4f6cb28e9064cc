"""The deterministic replay engine (pure: no anyio, no I/O, no clock)."""
