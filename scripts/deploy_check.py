"""Checks the deployment manifests offline: every Kubernetes object against the Kubernetes
schemas (kubernetes-validate, strict), the KEDA objects by what they refer to, and every
setting, flag and job kind they name against what the mixpool binary and
config/default.toml define.

usage: deploy_check.py MIXPOOL_BINARY
"""

import os
import re
import subprocess
import sys

import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBE = os.path.join(ROOT, "deploy", "kubernetes")
SLURM = os.path.join(ROOT, "deploy", "slurm", "workers.sbatch")
KUBERNETES_VERSION = "1.30.0"
# The object store's variables (read by the S3 client; config/default.toml, [s3]).
STORE_VARIABLES = {"AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ALLOW_HTTP"}

failures = []


def fail(message):
    failures.append(message)


def helps(binary):
    """`mixpool serve --help` and `mixpool worker --help`, by subcommand."""
    out = {}
    for sub in ("serve", "worker"):
        out[sub] = subprocess.run([binary, sub, "--help"], check=True, capture_output=True, text=True).stdout
    return out


def settings(help_texts):
    """Every environment variable mixpool reads: MIXPOOL_<KEY> for each key of [engine] and
    [service] in config/default.toml, MIXPOOL_S3_<KEY> for [s3] (commented keys too), the
    flags' variables, DATABASE_URL, MIXPOOL_CONFIG and the store's AWS_* variables."""
    names = {"DATABASE_URL", "MIXPOOL_CONFIG"} | STORE_VARIABLES
    section = None
    with open(os.path.join(ROOT, "config", "default.toml")) as f:
        for line in f:
            header = re.match(r"\s*\[(\w+)\]", line)
            if header:
                section = header.group(1)
                continue
            key = re.match(r"\s*#?\s*([a-z_]+)\s*=", line)
            if key and section in ("engine", "service"):
                names.add("MIXPOOL_" + key.group(1).upper())
            elif key and section == "s3":
                names.add("MIXPOOL_S3_" + key.group(1).upper())
    for text in help_texts.values():
        names |= set(re.findall(r"\[env: (\w+)=", text))
    return names


def kinds(help_texts):
    """The job kinds, as `mixpool worker --help` lists them."""
    found = re.search(r"--kinds <KINDS>.*?\[possible values: ([^\]]+)\]", help_texts["worker"], re.S)
    return {k.strip() for k in found.group(1).split(",")}


def main(binary):
    with open(os.path.join(KUBE, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    listed = kustomization["resources"]
    present = sorted(n for n in os.listdir(KUBE) if n.endswith(".yaml") and n != "kustomization.yaml")
    if sorted(listed) != present:
        fail(f"kustomization.yaml lists {sorted(listed)}, the folder holds {present}")
    images = {i["name"] for i in kustomization.get("images", [])}

    objects = []
    for name in listed:
        with open(os.path.join(KUBE, name)) as f:
            objects += [(name, doc) for doc in yaml.safe_load_all(f) if doc]
    by_kind = {}
    for name, doc in objects:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {e.message} at {'.'.join(map(str, e.path))}")

    help_texts = helps(binary)
    known = settings(help_texts)
    config = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    for kind, table, field in (("ConfigMap", config, "data"), ("Secret", secrets, "stringData")):
        for obj_name, obj in table.items():
            for key in obj.get(field, {}):
                if key not in known:
                    fail(f"{kind} {obj_name} sets {key}, which mixpool does not read")

    deployments = by_kind.get("Deployment", {})
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            where = f"Deployment {name}, container {container['name']}"
            if container["image"] not in images:
                fail(f"{where}: image {container['image']} is not among the kustomization's images {sorted(images)}")
            args = container.get("args", [])
            sub = args[0] if args else None
            if sub not in help_texts:
                fail(f"{where}: runs {sub!r}, not serve or worker")
                continue
            for flag in (a for a in args if a.startswith("--")):
                if not re.search(rf"\s{re.escape(flag)}[\s=]", help_texts[sub]):
                    fail(f"{where}: mixpool {sub} has no flag {flag}")
            for ref in container.get("envFrom", []):
                if "configMapRef" in ref and ref["configMapRef"]["name"] not in config:
                    fail(f"{where}: no ConfigMap {ref['configMapRef']['name']}")
                if "secretRef" in ref and ref["secretRef"]["name"] not in secrets:
                    fail(f"{where}: no Secret {ref['secretRef']['name']}")
            for env in container.get("env", []):
                if env["name"] not in known:
                    fail(f"{where}: sets {env['name']}, which mixpool does not read")
            if sub == "serve":
                probes = (container.get("livenessProbe", {}).get("httpGet", {}).get("path"),
                          container.get("readinessProbe", {}).get("httpGet", {}).get("path"))
                if probes != ("/healthz", "/readyz"):
                    fail(f"{where}: probes {probes}, not (/healthz, /readyz)")
                shutdown = max(int(c.get("data", {}).get("MIXPOOL_SHUTDOWN_SECONDS", 10)) for c in config.values())
                grace = pod.get("terminationGracePeriodSeconds", 30)
                if grace <= shutdown:
                    fail(f"{where}: terminationGracePeriodSeconds {grace} does not leave the server its shutdown_seconds {shutdown}")
            if sub == "worker" and "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {}):
                fail(f"{where}: a worker asks for no nvidia.com/gpu")

    every_kind = kinds(help_texts)
    auths = by_kind.get("TriggerAuthentication", {})
    for name, scaled in by_kind.get("ScaledObject", {}).items():
        target = scaled["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            fail(f"ScaledObject {name} scales {target}, no Deployment here")
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] != "postgresql":
                fail(f"ScaledObject {name}: a {trigger['type']} trigger, not postgresql")
                continue
            query = trigger["metadata"]["query"]
            named = set(re.findall(r"'(\w+)'", re.search(r"kind in \(([^)]*)\)", query).group(1)))
            if named != every_kind:
                fail(f"ScaledObject {name} counts jobs of {sorted(named)}; the kinds are {sorted(every_kind)}")
            auth = trigger.get("authenticationRef", {}).get("name")
            if auth not in auths:
                fail(f"ScaledObject {name}: no TriggerAuthentication {auth}")
    for name, auth in auths.items():
        for ref in auth["spec"]["secretTargetRef"]:
            secret = secrets.get(ref["name"])
            if secret is None or ref["key"] not in secret.get("stringData", {}):
                fail(f"TriggerAuthentication {name}: no key {ref['key']} in Secret {ref['name']}")

    # The Slurm template: valid bash, and the worker flags it passes exist.
    if subprocess.run(["bash", "-n", SLURM]).returncode != 0:
        fail("deploy/slurm/workers.sbatch is not valid bash")
    with open(SLURM) as f:
        for line in f:
            if "mixpool worker" in line and not line.lstrip().startswith("#"):
                for flag in re.findall(r"\s(--[a-z-]+)", line):
                    if not re.search(rf"\s{re.escape(flag)}[\s=]", help_texts["worker"]):
                        fail(f"workers.sbatch: mixpool worker has no flag {flag}")

    if failures:
        for f in failures:
            print("deploy check:", f, file=sys.stderr)
        sys.exit(1)
    print(f"deploy check: {len(objects)} objects in {len(listed)} files valid against Kubernetes {KUBERNETES_VERSION} "
          f"and mixpool's settings, flags and {len(every_kind)} job kinds; the Slurm template too")


if __name__ == "__main__":
    main(sys.argv[1])
