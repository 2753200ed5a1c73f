"""deploy/k8s/ against the Kubernetes API schemas and KEDA's CRD, offline; and what operators rely on.

kubernetes-validate ships the Kubernetes OpenAPI schemas (strict: unknown fields are errors, as
kubectl's server-side field validation makes them). The ScaledObject is checked against KEDA's own
CRD schema, vendored in deploy/k8s/schemas/. Fast: no cluster, no Redis, no TensorFlow.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
from ruamel.yaml import YAML

from featurevis import celeryconfig

REPO_ROOT = Path(__file__).resolve().parent.parent
K8S = REPO_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"
SCALED_OBJECT = K8S / "keda" / "scaledobject.yaml"


def _documents(path: Path) -> list[dict]:
    return [doc for doc in YAML(typ="safe").load_all(path.read_text()) if doc]


def _manifests() -> list[tuple[str, dict]]:
    return [(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
            for path in sorted(K8S.glob("*.yaml")) for doc in _documents(path)]


def _by_kind_and_name(kind: str, name: str) -> dict:
    [found] = [doc for _, doc in _manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def _closed(schema: dict) -> dict:
    """The CRD schema with unknown fields forbidden wherever it lists the fields, as the API server's
    strict field validation treats them (a CRD schema alone leaves them to be silently pruned)."""
    schema = copy.deepcopy(schema)
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return schema


@pytest.fixture(scope="module")
def keda_schema() -> dict:
    [crd] = _documents(K8S / "schemas" / "keda.sh_scaledobjects.yaml")
    assert crd["metadata"]["name"] == "scaledobjects.keda.sh"
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return _closed(version["schema"]["openAPIV3Schema"])


@pytest.fixture(scope="module")
def worker() -> dict:
    return _by_kind_and_name("Deployment", "featurevis-worker-gpu")


@pytest.fixture(scope="module")
def config() -> dict:
    return _by_kind_and_name("ConfigMap", "featurevis-config")["data"]


# --- schemas ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,manifest", _manifests(), ids=[name for name, _ in _manifests()])
def test_manifest_is_valid_against_the_kubernetes_schema(name, manifest):
    # Raises ValidationError naming the field; returns the schema version it checked against.
    assert kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True) == "1.33"


def test_kubernetes_validation_rejects_a_broken_manifest(worker):
    broken = copy.deepcopy(worker)
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 3700  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_scaled_object_is_valid_against_kedas_crd(keda_schema):
    [scaled] = _documents(SCALED_OBJECT)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    jsonschema.validate(scaled, keda_schema)


@pytest.mark.parametrize("breakage", ["unknown_field", "string_count", "no_triggers"])
def test_kedas_crd_rejects_a_broken_scaled_object(keda_schema, breakage):
    [scaled] = _documents(SCALED_OBJECT)
    if breakage == "unknown_field":
        scaled["spec"]["minReplicas"] = 0
    elif breakage == "string_count":
        scaled["spec"]["maxReplicaCount"] = "8"
    else:
        del scaled["spec"]["triggers"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, keda_schema)


# --- what the manifests promise -----------------------------------------------------------------

def _container(deployment: dict, name: str) -> dict:
    [found] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def test_workers_take_one_gpu_and_outlast_the_hard_time_limit(worker, config):
    pod = worker["spec"]["template"]["spec"]
    container = _container(worker, "worker")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["command"][:5] == ["python", "-m", "worker", "--gpus", "0"]
    hard_limit = int(config["FEATUREVIS_SOFT_TIME_LIMIT"]) + 60
    assert pod["terminationGracePeriodSeconds"] > hard_limit
    # The worker checks its limits against this number and refuses to start when they do not fit.
    assert int(config["FEATUREVIS_STOP_GRACE_PERIOD"]) == pod["terminationGracePeriodSeconds"]
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"


def test_worker_readiness_reflects_the_preload(worker):
    probe = _container(worker, "worker")["readinessProbe"]
    assert probe["exec"]["command"][:6] == ["python", "-m", "worker", "health", "--node", "gpu@%h"]
    assert probe["timeoutSeconds"] > int(probe["exec"]["command"][-1]), "the probe outlasts the ping timeout"
    assert "livenessProbe" not in _container(worker, "worker"), "a liveness restart would kill a running job"


def test_pods_run_as_the_images_numeric_non_root_user(worker):
    user = re.search(r"^USER (\d+):(\d+)$", (REPO_ROOT / "Dockerfile.gpu").read_text(), re.M)
    context = worker["spec"]["template"]["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (str(context["runAsUser"]), str(context["runAsGroup"])) == user.groups()


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [text for value in node.values() for text in _strings(value)]
    if isinstance(node, list):
        return [text for value in node for text in _strings(value)]
    return [node] if isinstance(node, str) else []


def test_secrets_are_referenced_never_inlined():
    passwords = []
    for name, manifest in _manifests():
        assert manifest["kind"] != "Secret", f"{name}: create Secrets with kubectl, not in the repo"
        # Each requirepass's own value, not the secret's path anywhere in the manifest (the probe names it too).
        for value in (value for text in _strings(manifest) for value in re.findall(r"requirepass[ \t]+(.*)", text)):
            assert value.strip() == '"$(cat /run/secrets/featurevis/redis-password)"', f"{name}: requirepass {value}"
            passwords.append(name)
        for container in manifest.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for variable in container.get("env", []):
                if re.search(r"PASSWORD|AUTH", variable["name"]):
                    assert "secretKeyRef" in variable.get("valueFrom", {}), f"{name}: {variable['name']} inlined"
    assert passwords == ["redis.yaml:StatefulSet/featurevis-redis"]


def test_redis_keeps_an_append_only_file_on_a_persistent_volume():
    redis = _by_kind_and_name("StatefulSet", "featurevis-redis")
    command = " ".join(_container(redis, "redis")["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert "--maxmemory 1gb" in command and _container(redis, "redis")["resources"]["limits"]["memory"] == "1536Mi"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_flower_and_the_results_server_are_deployed():
    flower = _container(_by_kind_and_name("Deployment", "featurevis-flower"), "flower")
    assert "FLOWER_BASIC_AUTH=\"$(cat /run/secrets/featurevis/flower-basic-auth)\"" in " ".join(flower["command"])
    results = _by_kind_and_name("Deployment", "featurevis-results")
    nginx = _container(results, "nginx")
    assert nginx["image"].startswith("nginxinc/nginx-unprivileged:")
    assert nginx["volumeMounts"][0]["readOnly"] is True
    assert _by_kind_and_name("PersistentVolumeClaim", "featurevis-results")["spec"]["accessModes"] == ["ReadWriteMany"]


def test_keda_scales_the_workers_on_the_celery_list(worker):
    [scaled] = _documents(SCALED_OBJECT)
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] == 0, "scales from zero by default"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == celeryconfig.task_default_queue
    assert trigger["metadata"]["address"].startswith("featurevis-redis.featurevis.svc")
    # KEDA reads the password from the target container's variable, which comes from the Secret.
    env = {v["name"]: v for v in _container(worker, "worker")["env"]}
    assert "secretKeyRef" in env[trigger["metadata"]["passwordFromEnv"]]["valueFrom"]


def test_the_workers_pods_reach_redis_and_dns_and_no_one_reaches_them(worker):
    """A model file is untrusted: where the disposable process describing it cannot take its network away
    (featurevis/sandbox.py), this policy bounds what the worker's pod, and so that process, can reach."""
    policy = _by_kind_and_name("NetworkPolicy", "featurevis-worker")
    pods = worker["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pods.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"] and policy["spec"]["ingress"] == []
    redis, dns, https = policy["spec"]["egress"]
    redis_pods = _by_kind_and_name("StatefulSet", "featurevis-redis")["spec"]["template"]["metadata"]["labels"]
    assert redis["to"][0]["podSelector"]["matchLabels"].items() <= redis_pods.items()
    assert redis["ports"] == [{"protocol": "TCP", "port": 6379}]
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert {port["port"] for port in dns["ports"]} == {53}
    assert https == {"ports": [{"protocol": "TCP", "port": 443}]}  # the weights' fetch; the file says when to drop it
