"""infra/ as shipped: every manifest parses, every command in it (and in README's cluster section) parses with the
CLI's own parser, every volume and secret referenced is defined, and the image, the launcher and the README name
the same extras and versions. Nothing here needs Docker, Kubernetes or a network."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from neuronxa_ray.cli import build_parser
from neuronxa_ray.config import job_from_dict

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
RAYJOB = INFRA / "kuberay-rayjob.yaml"
LAUNCHER = INFRA / "ray-cluster.yaml"
DOCKERFILE = INFRA / "Dockerfile"

# RayJobSpec / RayClusterSpec / group spec fields of KubeRay's CRD ray.io/v1 (json tags of
# ray-operator/apis/ray/v1/rayjob_types.go and raycluster_types.go): a misspelt field is silently dropped.
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML", "jobId",
    "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend", "schedule",
}  # fmt: skip
RAYCLUSTER_SPEC_FIELDS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
    "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions",
}  # fmt: skip
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP_FIELDS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
    "scaleStrategy", "idleTimeoutSeconds", "suspend",
}  # fmt: skip
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
ALLOWED_COMMANDS = {"run", "sql", "scores"}  # what the cluster docs use: run the job, then query its results

_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(text: str | int) -> int:
    """Bytes of a Kubernetes quantity ('16Gi', '3000000000')."""
    m = re.fullmatch(r"(\d+)([kMGT]i?|)", str(text))
    assert m, f"not a byte quantity: {text!r}"
    return int(m.group(1)) * _UNITS[m.group(2)]


# ---- reading the files ----


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def by_kind(documents: list[dict], kind: str) -> list[dict]:
    return [d for d in documents if d.get("kind") == kind]


def posix_lake_variant(text: str) -> str:
    """The RayJob file with its commented POSIX-lake alternative switched on, as its comments tell the reader to."""
    out, inside = [], False
    for line in text.splitlines():
        if line.strip() == "# BEGIN posix-lake":
            inside = True
            continue
        if line.strip() == "# END posix-lake":
            inside = False
            continue
        if inside:
            out.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
        elif "# POSIX lake alternative: " in line:
            indent, rest = line.split("# POSIX lake alternative: ")
            out.append(indent + rest)
        else:
            out.append(line)
    assert not inside, "BEGIN posix-lake without END"
    return "\n".join(out).replace("--lake s3://YOUR_BUCKET/YOUR_PREFIX", "--lake /lake")


def readme_cluster_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## On a cluster\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert m, "README has no '## On a cluster' section"
    return m.group(1)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        s = raw.strip()
        if not current and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):  # a comment inside a continued instruction
            continue
        if s.endswith("\\"):
            current += s[:-1] + " "
            continue
        lines.append(current + s)
        current = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_args() -> dict[str, str]:
    """Default values of the global (pre-first-FROM) ARGs."""
    args = {}
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value.strip('"')
    return args


def stages() -> dict[str, list[tuple[str, str]]]:
    """Build stages by name (FROM ... AS name) -> their instructions, FROM included."""
    result: dict[str, list] = {}
    name = None
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            m = re.search(r"\s+AS\s+(\S+)$", rest, flags=re.I)
            assert m, f"unnamed stage: FROM {rest}"
            name = m.group(1)
            result[name] = []
        if name is not None:
            result[name].append((word, rest))
    return result


def extras_in(text: str) -> list[set[str]]:
    """Every extras set installed in text: `neuronxa_ray[a,b]`, `dist/neuronxa_ray-....whl[a,b]`, `${wheel}[a,b]`."""
    found = re.findall(r"(?:neuronxa_ray[^\s\[\]\"'`]*|\$\{wheel\})\[([a-z0-9_,\- ]+)\]", text)
    return [{e.strip() for e in m.split(",")} for m in found]


def pyproject_extras() -> set[str]:
    """The keys of pyproject.toml's [project.optional-dependencies] (tomllib is 3.11+; the project supports 3.10)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([A-Za-z0-9_.\-]+)\s*=", section, flags=re.M))


def commands_in(text: str) -> list[str]:
    """Every `neuronxa-ray ...` command in shell-like lines (comments, code blocks, `ray job submit -- ...`)."""
    text = re.sub(r"\\\n\s*", " ", text)  # join continued lines
    found = []
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if "neuronxa-ray" not in line:
            continue
        candidates = re.findall(r"`([^`]*neuronxa-ray[^`]*)`", line) or [line]
        for candidate in candidates:
            found.extend(_commands(candidate))
    return found


def _commands(line: str) -> list[str]:
    try:
        tokens = shlex.split(line)
    except ValueError:
        return []
    out = []
    for i, token in enumerate(tokens):
        if token == "neuronxa-ray":
            rest = []
            for t in tokens[i + 1 :]:
                if t in ("|", "&&", ";", ">", "||") or t.startswith(">"):
                    break
                rest.append(t)
            out.append(shlex.join(["neuronxa-ray", *rest]))
            break
        if token.startswith("neuronxa-ray "):  # quoted, e.g. ray exec CONFIG "neuronxa-ray run ..."
            out.extend(_commands(token))
            break
    return out


def parse_command(cmd: str):
    tokens = shlex.split(cmd)
    assert tokens[0] == "neuronxa-ray", cmd
    try:
        args = build_parser().parse_args(tokens[1:])
    except SystemExit as e:  # argparse exits on errors
        raise AssertionError(f"the CLI rejects {cmd!r}") from e
    assert args.command in ALLOWED_COMMANDS, f"{cmd!r}: cluster docs use only {sorted(ALLOWED_COMMANDS)}"
    return args


def pod_templates(rayjob: dict) -> dict[str, dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        pods[f"worker:{group['groupName']}"] = group["template"]["spec"]
    return pods


def mounts(pod: dict) -> dict[str, dict]:
    """mountPath -> the pod volume mounted there (container 0 is the Ray container)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]] for m in pod["containers"][0].get("volumeMounts", [])}


def start_params(rayjob: dict) -> dict[str, dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    params = {"head": cluster["headGroupSpec"]["rayStartParams"]}
    for group in cluster["workerGroupSpecs"]:
        params[f"worker:{group['groupName']}"] = group["rayStartParams"]
    return params


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return docs(RAYJOB.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rayjob(manifests) -> dict:
    jobs = by_kind(manifests, "RayJob")
    assert len(jobs) == 1
    return jobs[0]


# ---- every file parses ----


def test_every_yaml_in_infra_parses():
    files = sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))
    assert {RAYJOB, LAUNCHER} <= set(files)
    for f in files:
        assert docs(f.read_text(encoding="utf-8")), f"{f} is empty"
    # the commented alternative parses too once switched on
    assert by_kind(docs(posix_lake_variant(RAYJOB.read_text(encoding="utf-8"))), "RayJob")


# ---- commands: RayJob entrypoint, launcher config, README ----


def test_commands_everywhere_parse_with_the_cli(rayjob):
    sources = {
        "RayJob entrypoint": [rayjob["spec"]["entrypoint"]],
        "launcher config": commands_in(LAUNCHER.read_text(encoding="utf-8")),
        "README cluster section": commands_in(readme_cluster_section()),
    }
    for where, cmds in sources.items():
        assert cmds, f"no neuronxa-ray command found in the {where}"
        for cmd in cmds:
            args = parse_command(cmd)
            if args.command == "run":
                assert args.no_progress, f"{where}: {cmd!r}: batch runs need --no-progress"
                assert args.lake, f"{where}: {cmd!r}: name the lake with --lake"
    readme_used = {parse_command(c).command for c in sources["README cluster section"]}
    assert readme_used == ALLOWED_COMMANDS, "README's cluster section shows run, then scores and sql over the results"


def test_commands_in_the_extractor_handle_wrapping():
    """The extractor itself: env prefixes, `ray job submit --`, quoted `ray exec`, continuations, inline code."""
    text = (
        "RAY_ADDRESS=ray://h:10001 neuronxa-ray scores --lake /l\n"
        "ray job submit --working-dir d -- \\\n  neuronxa-ray run j.yaml --lake s3://b/p --no-progress\n"
        "# ray exec c.yaml \"neuronxa-ray sql --lake /l 'SELECT 1'\"\n"
        "then `neuronxa-ray scores` prints a table; pip install neuronxa_ray\n"
    )
    assert commands_in(text) == [
        "neuronxa-ray scores --lake /l",
        "neuronxa-ray run j.yaml --lake s3://b/p --no-progress",
        "neuronxa-ray sql --lake /l 'SELECT 1'",
        "neuronxa-ray scores",
    ]
    with pytest.raises(AssertionError, match="rejects"):
        parse_command("neuronxa-ray run --lake /l")  # no job file


def test_submitted_job_files_exist():
    """`ray job submit --working-dir D -- neuronxa-ray run F` in README and launcher: D/F is in the repository."""
    text = re.sub(r"\\\n\s*", " ", readme_cluster_section() + LAUNCHER.read_text(encoding="utf-8"))
    found = re.findall(r"--working-dir\s+(\S+)\s+--\s+neuronxa-ray\s+run\s+(\S+)", text)
    assert found
    for directory, job in found:
        path = ROOT / directory / job
        assert path.is_file(), f"{directory}/{job} does not exist"
        job_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path))


# ---- the RayJob ----


def test_rayjob_fields_exist_in_the_crd(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    spec = rayjob["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, set(spec) - RAYJOB_SPEC_FIELDS
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC_FIELDS, set(cluster) - RAYCLUSTER_SPEC_FIELDS
    assert set(cluster["headGroupSpec"]) <= HEAD_GROUP_FIELDS
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_FIELDS, set(group) - WORKER_GROUP_FIELDS
    for params in start_params(rayjob).values():
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams values must be strings"


def test_rayjob_retries_and_cleans_up(rayjob):
    spec = rayjob["spec"]
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 1
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    assert spec.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES
    # a retry reruns the entrypoint on a new cluster: only a lake outside the pods lets it resume
    lake = build_parser().parse_args(shlex.split(spec["entrypoint"])[1:]).lake
    pods = pod_templates(rayjob)
    if not lake.startswith("s3://"):
        for name, pod in pods.items():
            assert "persistentVolumeClaim" in mounts(pod).get(lake, {}), f"{name}: lake {lake} is not on a PVC"


def test_gpu_workers_and_resources(rayjob):
    images = set()
    for name, pod in pod_templates(rayjob).items():
        container = pod["containers"][0]
        images.add(container["image"])
        res = container["resources"]
        assert res["requests"] and res["limits"], f"{name}: requests and limits"
        for key in ("cpu", "memory"):
            assert key in res["requests"] and key in res["limits"], f"{name}: {key}"
        assert quantity(res["requests"]["memory"]) <= quantity(res["limits"]["memory"])
        if name.startswith("worker:"):
            assert res["limits"]["nvidia.com/gpu"] == "1" == res["requests"]["nvidia.com/gpu"], name
    assert len(images) == 1, f"head and workers must run one image (same Python, Ray, torch): {images}"
    assert next(iter(images)).endswith("-cuda"), "GPU workers need the CUDA variant of the image"
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert sum(g["replicas"] for g in workers) >= 1


def test_every_volume_mounted_is_defined():
    for text in (RAYJOB.read_text(encoding="utf-8"), posix_lake_variant(RAYJOB.read_text(encoding="utf-8"))):
        documents = docs(text)
        job = by_kind(documents, "RayJob")[0]
        defined = {(d["kind"], d["metadata"]["name"]) for d in documents}
        for name, pod in pod_templates(job).items():
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for container in pod["containers"]:
                for m in container.get("volumeMounts", []):
                    assert m["name"] in volumes, f"{name}: volumeMount {m['name']!r} has no volume"
                for source in container.get("envFrom", []):
                    if "secretRef" in source:
                        assert ("Secret", source["secretRef"]["name"]) in defined
            for vol in volumes.values():
                if "persistentVolumeClaim" in vol:
                    claim = vol["persistentVolumeClaim"]["claimName"]
                    assert ("PersistentVolumeClaim", claim) in defined, f"{name}: PVC {claim!r} undefined"
                if "configMap" in vol:
                    assert ("ConfigMap", vol["configMap"]["name"]) in defined
                if "secret" in vol:
                    assert ("Secret", vol["secret"]["secretName"]) in defined
        for pvc in by_kind(documents, "PersistentVolumeClaim"):  # shared by pods on different nodes
            assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], pvc["metadata"]["name"]


def test_dev_shm_on_head_and_every_worker_fits_the_object_store(rayjob):
    params = start_params(rayjob)
    for name, pod in pod_templates(rayjob).items():
        shm = mounts(pod).get("/dev/shm")
        assert shm is not None, f"{name}: no /dev/shm volume (Ray's object store would fall back to disk)"
        assert shm["emptyDir"]["medium"] == "Memory"
        size = quantity(shm["emptyDir"]["sizeLimit"])
        store = params[name].get("object-store-memory")
        assert store is not None, f"{name}: set object-store-memory so it fits /dev/shm"
        assert int(store) < size, f"{name}: object store {store} B does not fit /dev/shm {size} B"
        memory = quantity(pod["containers"][0]["resources"]["limits"]["memory"])
        assert size < memory, f"{name}: /dev/shm counts against the memory limit; it must be smaller"


def test_models_cache_shared_by_every_pod(rayjob):
    env = {}
    for word, rest in stages()["runtime"]:
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                env[key] = value
    assert env["HF_HOME"].startswith("/models/") and env["NEURONXA_RAY_CACHE"].startswith("/models/")
    for name, pod in pod_templates(rayjob).items():
        vol = mounts(pod).get("/models")
        assert vol is not None and "persistentVolumeClaim" in vol, f"{name}: /models is not the shared PVC"


def test_configmap_job_is_valid_and_is_the_shipped_example(rayjob, manifests):
    cmd = build_parser().parse_args(shlex.split(rayjob["spec"]["entrypoint"])[1:])
    head = pod_templates(rayjob)["head"]
    directory, key = cmd.jobs[0].rsplit("/", 1)
    volume = mounts(head)[directory]
    configmap = next(d for d in by_kind(manifests, "ConfigMap") if d["metadata"]["name"] == volume["configMap"]["name"])
    raw = yaml.safe_load(configmap["data"][key])
    job = job_from_dict(raw, source="ConfigMap job.yaml")
    corpus = job.load_corpus()  # every language exists in the data and has n_sentences sentences
    assert set(corpus.sentences) == {job.pivot, *job.languages}
    assert all(len(v) == job.n_sentences for v in corpus.sentences.values())
    assert raw == yaml.safe_load((INFRA / "jobs" / "pythia_udhr.yaml").read_text(encoding="utf-8"))


def test_rayjob_ray_version_is_the_image_ray(rayjob):
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == dockerfile_args()["RAY_VERSION"]


# ---- the image ----


def test_dockerfile_extras_match_readme_launcher_and_pyproject():
    known = pyproject_extras()
    assert {"cluster", "gguf", "dev"} <= known  # the parser reads the table
    extras = set(dockerfile_args()["EXTRAS"].split(","))
    assert "cluster" in extras and extras <= known, extras - known
    assert any("[${EXTRAS}]" in rest for word, rest in stages()["runtime"] if word == "RUN")
    readme = extras_in(readme_cluster_section())
    assert readme and extras in readme, f"README names {readme}, the image installs {extras}"
    for named in readme:
        assert named <= known, named - known
    launcher = extras_in(" ".join(yaml.safe_load(LAUNCHER.read_text(encoding="utf-8"))["setup_commands"]))
    assert launcher == [extras]


def test_launcher_pins_the_image_versions():
    args = dockerfile_args()
    setup = " ".join(yaml.safe_load(LAUNCHER.read_text(encoding="utf-8"))["setup_commands"])
    for package, arg in (("torch", "TORCH_VERSION"), ("transformers", "TRANSFORMERS_VERSION"), ("ray", "RAY_VERSION")):
        assert re.search(rf"{package}(\[\w+\])?=={re.escape(args[arg])}\b", setup), f"{package} {args[arg]}"


def test_dockerfile_variants_wheel_and_user():
    args = dockerfile_args()
    st = stages()
    assert args["VARIANT"] in ("cpu", "cuda")
    assert {"builder", "base-cpu", "base-cuda", "runtime"} <= set(st)
    assert st["runtime"][0][1].startswith("base-${VARIANT}")
    assert st["base-cpu"][0][1].startswith("python:${PYTHON_VERSION}-slim") and args["PYTHON_VERSION"] == "3.11"
    cpu_env = " ".join(rest for word, rest in st["base-cpu"] if word == "ENV")
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu_env
    cuda_env = " ".join(rest for word, rest in st["base-cuda"] if word == "ENV")
    assert "download.pytorch.org" not in cuda_env  # the default (CUDA) torch from PyPI
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:12.")
    builder_runs = [rest for word, rest in st["builder"] if word == "RUN"]
    assert any(re.search(r"pip wheel .*--no-deps.* \.$", r) for r in builder_runs)
    users = [rest for word, rest in st["runtime"] if word == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_dockerfile_copies_exist_and_are_not_dockerignored():
    ignored = [
        line.strip().strip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must in (".git", ".venv", "lake"):
        assert must in ignored, f".dockerignore should exclude {must}"
    for word, rest in stages()["builder"]:
        if word == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                assert src.strip("/") not in ignored, f"COPY {src}: excluded by .dockerignore"


# ---- the launcher ----


def test_launcher_installs_the_local_wheel():
    cfg = yaml.safe_load(LAUNCHER.read_text(encoding="utf-8"))
    assert cfg["provider"]["type"] in ("local", "aws")
    setup = " ".join(cfg["setup_commands"])
    assert "git+" not in setup and "YOUR_GIT" not in setup and "://" not in setup, "install from the copied wheel"
    dist = [remote for remote, local in cfg["file_mounts"].items() if local.rstrip("/") == "dist"]
    assert dist and f"{dist[0]}/neuronxa_ray-*.whl" in setup
    for remote, local in cfg["file_mounts"].items():
        if local.rstrip("/") != "dist":  # dist/ is built before `ray up`
            assert (ROOT / local).exists(), f"file_mounts {remote}: {local} does not exist"
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head, "the head sets up the workers"
    assert "$RAY_HEAD_IP:6379" in " ".join(cfg["worker_start_ray_commands"])


def test_readme_queries_bind_to_the_views(tmp_path):
    """Every `neuronxa-ray sql` query in README's cluster section names views and columns that exist."""
    from neuronxa_ray.query import connect

    con = connect(tmp_path)  # an empty lake: every view exists, with no rows
    queries = [parse_command(c) for c in commands_in(readme_cluster_section())]
    queries = [a.query for a in queries if a.command == "sql"]
    assert queries
    for query in queries:
        con.sql(query).fetchall()
