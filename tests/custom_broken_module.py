"""A user's module that fails while importing (tests/unit/test_custom_models.py)."""

raise RuntimeError("this module is broken on purpose")
