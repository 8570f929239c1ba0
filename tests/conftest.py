import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (2 CPUs, a small object store), shut down at the end."""
    import ray

    ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()
