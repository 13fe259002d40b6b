import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest_defi_fixtures import tiny_checkpoint, tiny_policy  # noqa: E402,F401
