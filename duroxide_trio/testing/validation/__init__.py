"""Provider validation suite (work in progress)."""
