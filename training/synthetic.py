"""Moved to tests/synthetic.py: test checkpoints are a test helper, not part of the package.

This re-export is transitional, for tests/server/test_swap_e2e.py, which is not this change's
to edit; once it imports `tests.synthetic`, delete this file.
"""

from tests.synthetic import copy_full_entry, corrupt_manifest, make_lora_entry

__all__ = ["copy_full_entry", "corrupt_manifest", "make_lora_entry"]
