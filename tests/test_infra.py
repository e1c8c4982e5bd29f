"""infra/ agrees with the code: every file parses; every environment variable the settings need in
a deployment is provided (compose, the k8s ConfigMap and Secret) and every one provided is read;
every command (Procfile, Dockerfiles, compose, k8s) names a module, admin subcommand and Celery
queue that exist; image names and the API port match everywhere; KEDA scales each worker on its
own queue; the API imports no torch. No container runtime here: these are static checks."""

from __future__ import annotations

import ast
import inspect
import json
import re
import shlex
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions, requires
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from packaging.requirements import Requirement

from api.admin import main as admin_main
from api.celery_config import HOUSEKEEPING_QUEUE, QUEUE_BY_KIND, make_celery
from api.settings import Settings

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
API_PORT = 8000
IMAGES = {"api": "omnipersona-api", "worker": "omnipersona-worker"}
# Read outside Settings.from_env (logging, metrics, the worker runtime).
OTHER_VARIABLES = {"OMNI_LOG_FORMAT", "OMNI_LOG_LEVEL", "PROMETHEUS_MULTIPROC_DIR", "OMNI_TORCH_THREADS", "PORT"}
# Variables whose embedded default is fine in a deployment, and why.
OPTIONAL_IN_DEPLOYMENT = {
    "S3_ENDPOINT_URL": "unset means AWS S3 itself",
    "OMNI_STORE_DIR": "the local object-store folder, unused once S3_BUCKET is set",
    "OMNI_STORE_SIGNING_KEY": "signs the local store's download URLs; S3 presigns its own",
}


def settings_variables() -> set[str]:
    """The names `Settings.from_env` reads: string constants handed to `env.get(...)` or `_int(env, ...)`."""
    tree = ast.parse(inspect.getsource(Settings.from_env).strip().replace("\n    ", "\n"))
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        is_get = isinstance(node.func, ast.Attribute) and node.func.attr == "get" and \
            isinstance(node.func.value, ast.Name) and node.func.value.id == "env"
        is_int = isinstance(node.func, ast.Name) and node.func.id == "_int"
        args = node.args[1:2] if is_int else node.args[:1] if is_get else []
        names |= {a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return names


def changed_fields(name: str) -> dict[str, object]:
    """The settings (and their defaults) that a value of `name` changes."""
    base = Settings.from_env({})
    for value in ("7", "yes", "x://sample"):
        try:
            sample = Settings.from_env({name: value})
        except ValueError:
            continue
        changed = {f: getattr(base, f) for f, v in vars(sample).items() if v != getattr(base, f)}
        if changed:
            return changed
    raise AssertionError(f"{name} is read but no value changes a setting")


def needs_a_value_in_deployment() -> set[str]:
    """Variables whose unset default is an embedded one (None, or a file under the data folder:
    SQLite, the SQLite broker, the local store): a cluster must set them."""
    base = Settings.from_env({})
    data_dir = str(base.data_dir)
    needed = set()
    for name in settings_variables():
        for default in changed_fields(name).values():
            if default is None or data_dir in str(default):
                needed.add(name)
    return needed - set(OPTIONAL_IN_DEPLOYMENT)


def compose() -> dict:
    """The compose file, with each service's image name without its tag."""
    parsed = yaml.safe_load((INFRA / "compose.yaml").read_text())
    for service in parsed["services"].values():
        if "image" in service:
            service["image"] = service["image"].split(":")[0]
    return parsed


def k8s_documents() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def k8s_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in k8s_documents() if d["kind"] == kind}


def secret_keys() -> set[str]:
    lines = (K8S / "secret.env.example").read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if line.strip() and not line.startswith("#")}


def k8s_containers() -> list[tuple[str, dict]]:
    out = []
    for kind in ("Deployment", "Job"):
        for name, doc in k8s_kind(kind).items():
            out += [(name, c) for c in doc["spec"]["template"]["spec"]["containers"]]
    return out


def dockerfile_instructions(name: str) -> dict[str, list[str]]:
    text = (INFRA / name).read_text().replace("\\\n", " ")
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.setdefault(word.upper(), []).append(rest.strip())
    return found


def exec_form(raw: str) -> list[str]:
    return json.loads(raw[raw.index("["):])


def all_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for line in (REPO / "Procfile").read_text().splitlines():
        name, _, cmd = line.partition(":")
        commands.append((f"Procfile {name}", shlex.split(cmd)))
    for name, service in compose()["services"].items():
        if "command" in service and "image" in service and service["image"] in IMAGES.values():
            commands.append((f"compose {name}", service["command"]))
        health = service.get("healthcheck", {}).get("test")
        if health and service.get("image") in IMAGES.values():
            commands.append((f"compose {name} healthcheck", health[1:]))
    for name, container in k8s_containers():
        commands.append((f"k8s {name}", container["command"]))
        probe = container.get("livenessProbe", {}).get("exec")
        if probe:
            commands.append((f"k8s {name} probe", probe["command"]))
    for dockerfile in ("api.Dockerfile", "worker.Dockerfile"):
        found = dockerfile_instructions(dockerfile)
        commands += [(f"{dockerfile} CMD", exec_form(raw)) for raw in found["CMD"]]
        commands += [(f"{dockerfile} HEALTHCHECK", exec_form(raw)) for raw in found["HEALTHCHECK"]]
    return commands


def celery_queues() -> set[str]:
    app = make_celery(Settings.from_env({"BROKER_URL": "memory://"}))
    return {route["queue"] for route in app.conf.task_routes.values()} | {app.conf.task_default_queue}


def option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg in names:
            return argv[i + 1]
    return None


def worker_queue(argv: list[str]) -> str | None:
    return option(argv, "--queues", "-Q") if "celery" in argv[:1] and "worker" in argv else None


def test_every_file_parses():
    assert compose()["services"]
    docs = k8s_documents()
    assert all(d.get("apiVersion") and d.get("kind") and d["metadata"].get("name") for d in docs)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert kustomization["secretGenerator"][0]["name"] == "omnipersona-secrets"
    json.loads((INFRA / "deepspeed" / "zero2-bf16.json").read_text())


def test_settings_a_deployment_needs_are_provided_in_compose_and_k8s():
    needed = needs_a_value_in_deployment()
    # The connection strings and secrets at least; the recorder found them by reading the code.
    assert {"DATABASE_URL", "BROKER_URL", "S3_BUCKET", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY",
            "OMNI_SECRET_KEY", "OMNI_METRICS_TOKEN", "OMNI_DATA_DIR"} <= needed
    assert set(OPTIONAL_IN_DEPLOYMENT) <= settings_variables()
    services = compose()["services"]
    for name in ("migrate", "api", "train", "render", "housekeeping"):
        missing = needed - set(services[name]["environment"])
        assert not missing, f"compose service {name} lacks {sorted(missing)}"
    configmap = k8s_kind("ConfigMap")["omnipersona-settings"]["data"]
    assert not needed - set(configmap) - secret_keys(), "k8s ConfigMap + Secret lack some settings"
    assert not set(configmap) & secret_keys(), "a setting is both in the ConfigMap and the Secret"
    for name, container in k8s_containers():
        refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
        assert refs == {"omnipersona-settings", "omnipersona-secrets"}, name


def test_every_variable_provided_is_one_the_code_reads():
    known = settings_variables() | OTHER_VARIABLES
    provided = set(compose()["x-service-env"]) | set(k8s_kind("ConfigMap")["omnipersona-settings"]["data"])
    provided |= secret_keys()
    for dockerfile in ("api.Dockerfile", "worker.Dockerfile"):
        for raw in dockerfile_instructions(dockerfile)["ENV"]:
            provided |= {name for name in re.findall(r"(\w+)=", raw)
                         if name.startswith(("OMNI_", "PROMETHEUS", "PORT"))}
    assert not provided - known, f"set but read by nothing: {sorted(provided - known)}"


def test_every_command_names_modules_subcommands_and_queues_that_exist():
    queues = celery_queues()
    assert queues == {*QUEUE_BY_KIND.values(), HOUSEKEEPING_QUEUE}
    seen_queues = set()
    for where, argv in all_commands():
        program = argv[0]
        if program == "celery":
            assert find_spec(option(argv, "-A")), where
            queue = worker_queue(argv)
            assert queue in queues, f"{where}: queue {queue!r}"
            assert option(argv, "--hostname", "-n").startswith(f"{queue}@"), where
            seen_queues.add(queue)
        elif program == "gunicorn":
            module, _, attr = argv[-1].partition(":")
            assert find_spec(module) and attr == "app", where
            assert option(argv, "--bind", "-b") in (f"0.0.0.0:{API_PORT}", f"0.0.0.0:${{PORT:-{API_PORT}}}"), where
        elif program == "python" and argv[1] == "-m":
            assert find_spec(argv[2]), where
            if argv[2] == "api.admin":
                with pytest.raises(SystemExit) as exc:
                    admin_main([argv[3], "--help"])
                assert exc.value.code == 0, f"{where}: api.admin has no subcommand {argv[3]!r}"
        elif program == "python" and argv[1] == "-c":
            compile(argv[2], where, "exec")
        elif program == "sleep":
            assert where.startswith("k8s") is False
        else:
            raise AssertionError(f"{where}: unexpected program {program!r}")
    assert seen_queues == queues  # every queue has a worker


def test_beat_runs_in_exactly_one_single_replica_process():
    def beats(commands):
        return [where for where, argv in commands if "--beat" in argv]

    assert beats([(n, s.get("command", [])) for n, s in compose()["services"].items()]) == ["housekeeping"]
    assert beats([(n, c["command"]) for n, c in k8s_containers()]) == ["omnipersona-housekeeping"]
    deployment = k8s_kind("Deployment")["omnipersona-housekeeping"]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"
    assert "omnipersona-housekeeping" not in {s["spec"]["scaleTargetRef"]["name"]
                                              for s in k8s_kind("ScaledObject").values()}


def test_image_names_and_the_api_port_match_everywhere():
    services = compose()["services"]
    dockerfiles = {"api": "infra/api.Dockerfile", "worker": "infra/worker.Dockerfile"}
    for service in services.values():
        for role, image in IMAGES.items():
            if service.get("image") == image:
                assert service["build"]["dockerfile"] == dockerfiles[role]
                assert (REPO / service["build"]["dockerfile"]).is_file()
    assert services["api"]["image"] == services["migrate"]["image"] == IMAGES["api"]
    assert {services[q]["image"] for q in ("train", "render", "housekeeping")} == {IMAGES["worker"]}
    k8s_images = {name: c["image"] for name, c in k8s_containers()}
    assert k8s_images["omnipersona-api"] == k8s_images["omnipersona-migrate"] == IMAGES["api"]
    assert {k8s_images[f"omnipersona-{q}"] for q in ("train", "render", "housekeeping")} == {IMAGES["worker"]}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert {i["name"] for i in kustomization["images"]} == set(IMAGES.values())

    assert dockerfile_instructions("api.Dockerfile")["EXPOSE"] == [str(API_PORT)]
    assert services["api"]["ports"] == [f"{API_PORT}:{API_PORT}"]
    assert f"127.0.0.1:{API_PORT}/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    api_container = dict(k8s_containers())["omnipersona-api"]
    assert api_container["ports"] == [{"name": "http", "containerPort": API_PORT}]
    assert api_container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = k8s_kind("Service")["omnipersona-api"]["spec"]
    assert service["ports"][0]["targetPort"] == "http"
    assert service["selector"] == k8s_kind("Deployment")["omnipersona-api"]["spec"]["selector"]["matchLabels"]
    backend = k8s_kind("Ingress")["omnipersona-api"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"] == {"name": "omnipersona-api", "port": {"name": "http"}}


def test_keda_scales_each_gpu_worker_on_its_own_queue():
    compose_broker = urlparse(compose()["x-service-env"]["BROKER_URL"])
    deployments = k8s_kind("Deployment")
    scaled = k8s_kind("ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled.values()} == {"omnipersona-train",
                                                                              "omnipersona-render"}
    for so in scaled.values():
        target = deployments[so["spec"]["scaleTargetRef"]["name"]]
        queue = worker_queue(target["spec"]["template"]["spec"]["containers"][0]["command"])
        redis_trigger, prometheus_trigger = so["spec"]["triggers"]
        assert redis_trigger["type"] == "redis" and redis_trigger["metadata"]["listName"] == queue
        assert redis_trigger["metadata"]["databaseIndex"] == compose_broker.path.strip("/")
        assert f'queue="{queue}"' in prometheus_trigger["metadata"]["query"]
        assert 'state="running"' in prometheus_trigger["metadata"]["query"]


def test_gpu_workers_request_gpus_and_shut_down_gracefully():
    deployments = k8s_kind("Deployment")
    for queue in ("train", "render"):
        pod = deployments[f"omnipersona-{queue}"]["spec"]["template"]["spec"]
        resources = pod["containers"][0]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["nodeSelector"]
        assert pod["terminationGracePeriodSeconds"] >= 120
    assert "nvidia.com/gpu" not in str(deployments["omnipersona-housekeeping"])
    pdbs = k8s_kind("PodDisruptionBudget")
    for name, pdb in pdbs.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert set(pdbs) == {"omnipersona-api", "omnipersona-train", "omnipersona-render"}


def test_migrations_run_once_before_the_api_and_workers():
    services = compose()["services"]
    assert services["migrate"]["command"] == ["python", "-m", "api.admin", "migrate"]
    for name in ("api", "train", "render", "housekeeping"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert "healthcheck" in services[name]
    job = k8s_kind("Job")["omnipersona-migrate"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert job["template"]["spec"]["containers"][0]["command"] == ["python", "-m", "api.admin", "migrate"]


def test_images_and_pods_run_as_non_root_with_health_checks():
    for dockerfile in ("api.Dockerfile", "worker.Dockerfile"):
        found = dockerfile_instructions(dockerfile)
        assert found["USER"] and not found["USER"][-1].startswith(("0", "root")), dockerfile
        assert found["HEALTHCHECK"], dockerfile
    for kind in ("Deployment", "Job"):
        for name, doc in k8s_kind(kind).items():
            assert doc["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True, name


def test_api_requirements_are_the_service_extra_plus_pillow_without_torch():
    def names(specs):
        return {re.split(r"[\[<>=!~ ]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}

    lines = [s.strip() for s in (INFRA / "requirements-api.txt").read_text().splitlines()]
    api_requirements = names(s for s in lines if s and not s.startswith("#"))
    service = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["service"]
    assert api_requirements == names(service) | {"pillow"}
    assert not api_requirements & {"torch", "deepspeed", "transformers", "diffusers"}


BLOCKED_IMPORT = """
import importlib, importlib.abc, pkgutil, sys
BLOCKED = ("torch", "deepspeed", "transformers", "diffusers", "omnipersona")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the API image has no {name}")
sys.meta_path.insert(0, Block())
import api, api.wsgi
for module in pkgutil.walk_packages(api.__path__, "api."):
    importlib.import_module(module.name)
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


def _normalise(name: str) -> str:
    return re.split(r"[\[<>=!~ (;]", name.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_the_api_imports_no_torch(tmp_path):
    env = {"OMNI_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = set(done.stdout.split())
    assert {"api", "flask", "sqlalchemy"} <= imported
    assert not imported & {"torch", "deepspeed", "transformers", "diffusers", "omnipersona"}


def test_the_api_image_installs_every_package_api_imports():
    """Every third-party module named in an import anywhere under api/ (lazy ones too) belongs to a
    distribution of requirements-api.txt or one of their own requirements."""
    imported: set[str] = set()
    for path in (REPO / "api").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"api", "__future__"}
    assert not third_party & {"torch", "omnipersona", "workers"}
    by_module = packages_distributions()
    lines = [s.strip() for s in (INFRA / "requirements-api.txt").read_text().splitlines()]
    installed: set[str] = set()
    visited: set[tuple[str, tuple[str, ...]]] = set()
    todo = [Requirement(s) for s in lines if s and not s.startswith("#")]
    while todo:  # the requirements and, recursively, what they pull in (with their extras)
        requirement = todo.pop()
        key = (_normalise(requirement.name), tuple(sorted(requirement.extras)))
        if key in visited:
            continue
        visited.add(key)
        installed.add(key[0])
        for raw in requires(requirement.name) or []:
            dependency = Requirement(raw)
            extras = requirement.extras or {""}
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
                todo.append(dependency)
    for module in sorted(third_party):
        distributions = {_normalise(d) for d in by_module.get(module, [])}
        assert distributions & installed, f"api/ imports {module} ({distributions}), not in requirements-api.txt"


def test_deepspeed_config_is_zero2_bf16_and_merges_with_the_trainer_recipe():
    from omnipersona.trainer import TrainRecipe, deepspeed_config

    config = json.loads((INFRA / "deepspeed" / "zero2-bf16.json").read_text())
    assert config["zero_optimization"]["stage"] == 2 and config["bf16"]["enabled"] is True
    # The recipe owns the batch size: the file must not override it.
    assert "train_micro_batch_size_per_gpu" not in config and "train_batch_size" not in config
    merged = deepspeed_config(TrainRecipe(batch_size=3, deepspeed_config=config))
    assert merged["train_micro_batch_size_per_gpu"] == 3 and merged["zero_optimization"]["stage"] == 2
