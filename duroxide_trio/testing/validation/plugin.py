"""pytest plugin for the provider validation suite (work in progress: does nothing yet)."""
