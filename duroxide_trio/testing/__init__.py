"""Testing helpers shipped with duroxide-trio: the provider validation suite (``testing.validation``)."""
