"""Offline validation of Kubernetes manifests, run by scripts/k8s-validate.sh in its venv.

    python k8s-validate.py --kube-version 1.31 --values-schema helm/twinroute/values.schema.json \
        --set NAME FILE... [--set NAME FILE...] [--self-test]

Each --set is one group of manifests that belong together (one `helm template` output, or k8s/).
For every object:
  - core kinds: kubernetes-validate's strict schema for that Kubernetes version (unknown fields
    are errors). A kind or apiVersion it has no schema for is an ERROR, never skipped: only the
    CRD kinds in CRD_KINDS below are not in the core schemas, and they get a minimal structural
    check of their own, with a printed note;
  - ConfigMaps with a key twinroute.yaml: that config against the chart's twinroute config schema
    (values.schema.json, definitions/twinrouteConfig: the keys twinroute accepts);
  - ConfigMaps with a key settings.yaml: exactly the injector settings keys;
  - pods (Pod, or a Deployment's template) that mount a twinroute ConfigMap of the same set:
    terminationGracePeriodSeconds must exceed that config's grace_period_s;
  - sets named k8s*: no metadata.namespace (the plain manifests are namespace-agnostic).
Exits 1 when anything failed.
"""

import argparse
import json
import os
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv

# CRDs the chart renders that kubernetes-validate has no schema for. Minimal hand-written checks
# of the fields the controllers need; nothing else is skipped.
CRD_KINDS = {
    ("cert-manager.io/v1", "Issuer"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "minProperties": 1,
                "properties": {"selfSigned": {"type": "object"}, "ca": {"type": "object"}},
            }
        },
    },
    ("cert-manager.io/v1", "Certificate"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["secretName", "issuerRef", "dnsNames"],
                "properties": {
                    "secretName": {"type": "string", "minLength": 1},
                    "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    "duration": {"type": "string"},
                    "renewBefore": {"type": "string"},
                    "issuerRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                            "group": {"type": "string"},
                        },
                    },
                    "privateKey": {
                        "type": "object",
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "encoding": {"enum": ["PKCS1", "PKCS8"]},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                        },
                    },
                },
            }
        },
    },
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["selector", "podMetricsEndpoints"],
                "properties": {
                    "selector": {"type": "object"},
                    "namespaceSelector": {"type": "object"},
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "object", "required": ["port"]},
                    },
                },
            }
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "rules": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["alert", "expr"],
                                        "properties": {
                                            "alert": {"type": "string", "minLength": 1},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": {"type": "string"},
                                            "labels": {"type": "object"},
                                            "annotations": {"type": "object"},
                                        },
                                    },
                                }
                            },
                        },
                    }
                },
            }
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {"type": "object"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "object", "required": ["port"]},
                    },
                },
            }
        },
    },
}

SETTINGS_KEYS = {
    "image", "imagePullPolicy", "configMap", "keysSecret", "listenPort", "adminPort",
    "nativeSidecar", "failurePolicy", "resources", "stateSizeLimit",
}
# Keys the injector reads when the chart sets them (sharedState on).
OPTIONAL_SETTINGS_KEYS = {"sharedStateSecret"}

# Every call of kubernetes_validate.utils.validate re-reads the 1.3 MB definitions file; keep
# the parsed JSON (read-only) for the run.
_schema_cache = {}
_orig_schema_contents = kv.schema_contents


def _cached_schema_contents(filename, desired_version):
    if filename not in _schema_cache:
        _schema_cache[filename] = _orig_schema_contents(filename, desired_version)
    return _schema_cache[filename]


kv.schema_contents = _cached_schema_contents


def describe(filename, obj):
    filename = os.path.relpath(filename)
    meta = obj.get("metadata") or {}
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{filename} {obj.get('kind')} {ns}{meta.get('name')}"


class Run:
    def __init__(self, kube_version, config_schema):
        self.kube_version = kube_version
        self.config_validator = jsonschema.Draft7Validator(config_schema)
        self.failures = 0
        self.objects = 0
        self.notes = 0
        self.quiet_failures = None  # a list while self-testing: failures collected, not printed

    def fail(self, where, msg):
        if self.quiet_failures is not None:
            self.quiet_failures.append(msg)
            return
        self.failures += 1
        print(f"  FAIL {where}: {msg}")

    def ok(self, where, msg):
        print(f"  ok   {where}: {msg}")

    def note(self, where, msg):
        self.notes += 1
        print(f"  note {where}: {msg}")

    def validate_object(self, where, obj):
        api, kind = obj.get("apiVersion"), obj.get("kind")
        if not isinstance(api, str) or not isinstance(kind, str):
            self.fail(where, "no apiVersion/kind")
            return
        crd = CRD_KINDS.get((api, kind))
        if crd is not None:
            errs = sorted(jsonschema.Draft7Validator(crd).iter_errors(obj), key=str)
            meta_ok = isinstance(obj.get("metadata"), dict) and obj["metadata"].get("name")
            if errs or not meta_ok:
                for e in errs:
                    self.fail(where, f"{'.'.join(map(str, e.path))}: {e.message}")
                if not meta_ok:
                    self.fail(where, "metadata.name missing")
            else:
                self.note(where, f"{api} {kind} is a CRD, not in the core schemas: "
                                 "checked its required fields only")
            return
        try:
            version = kv.validate(obj, self.kube_version, strict=True)
            self.ok(where, f"valid against Kubernetes {version} (strict)")
        except kv.ValidationError as e:
            self.fail(where, f"{'.'.join(map(str, e.path))}: {e.message}")
        except kv.SchemaNotFoundError as e:
            self.fail(where, f"{e.message} (not a core kind and not a known CRD)")
        except kv.VersionNotSupportedError:
            print(f"FATAL: kubernetes-validate has no schemas for Kubernetes {self.kube_version}")
            sys.exit(2)

    def check_configmap(self, where, obj, configs):
        data = obj.get("data") or {}
        meta = obj.get("metadata") or {}
        name = (meta.get("namespace"), meta.get("name"))
        if "twinroute.yaml" in data:
            try:
                cfg = yaml.safe_load(data["twinroute.yaml"])
            except yaml.YAMLError as e:
                self.fail(where, f"twinroute.yaml is not YAML: {e}")
                return
            errs = sorted(self.config_validator.iter_errors(cfg), key=str)
            for e in errs:
                self.fail(where, f"twinroute.yaml: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
            if not errs:
                self.ok(where, "twinroute.yaml matches twinroute's config keys")
                configs[name] = cfg
        if "settings.yaml" in data:
            try:
                st = yaml.safe_load(data["settings.yaml"])
            except yaml.YAMLError as e:
                self.fail(where, f"settings.yaml is not YAML: {e}")
                return
            keys = set(st or {}) - OPTIONAL_SETTINGS_KEYS
            if keys != SETTINGS_KEYS:
                self.fail(where, f"settings.yaml keys: missing {sorted(SETTINGS_KEYS - keys)}, "
                                 f"unknown {sorted(keys - SETTINGS_KEYS)}")
            elif st["failurePolicy"] not in ("Ignore", "Fail") or not isinstance(st["nativeSidecar"], bool):
                self.fail(where, "settings.yaml: failurePolicy must be Ignore|Fail, nativeSidecar a bool")
            else:
                self.ok(where, "settings.yaml has exactly the injector's keys")

    def check_grace(self, where, obj, configs):
        spec = None
        if obj.get("kind") == "Pod":
            spec = obj.get("spec")
        elif obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            spec = obj.get("spec", {}).get("template", {}).get("spec")
        if not isinstance(spec, dict):
            return
        ns = (obj.get("metadata") or {}).get("namespace")
        for vol in spec.get("volumes") or []:
            cm = (ns, (vol.get("configMap") or {}).get("name"))
            if cm in configs:
                grace = configs[cm].get("grace_period_s", 20)
                tgps = spec.get("terminationGracePeriodSeconds", 30)
                if tgps <= grace:
                    self.fail(where, f"terminationGracePeriodSeconds {tgps} must exceed "
                                     f"grace_period_s {grace} of ConfigMap {cm[1]}")
                else:
                    self.ok(where, f"terminationGracePeriodSeconds {tgps} > grace_period_s {grace}")

    def run_set(self, name, files):
        print(f"== {name}")
        docs = []
        for f in files:
            with open(f) as fh:
                try:
                    loaded = [d for d in yaml.safe_load_all(fh) if d is not None]
                except yaml.YAMLError as e:
                    self.fail(f, f"not YAML: {e}")
                    continue
            if not loaded:
                self.fail(f, "no objects")
            for d in loaded:
                docs.append((f, d))
        configs = {}
        for f, d in docs:
            if not isinstance(d, dict):
                self.fail(f, "a document that is not a mapping")
                continue
            meta = d.get("metadata") or {}
            where = describe(f, d)
            self.objects += 1
            self.validate_object(where, d)
            if name.startswith("k8s") and "namespace" in meta:
                self.fail(where, "k8s/ manifests must not set metadata.namespace")
            if d.get("kind") == "ConfigMap":
                self.check_configmap(where, d, configs)
        for f, d in docs:
            if isinstance(d, dict):
                self.check_grace(describe(f, d), d, configs)

    def self_test(self):
        """The checks must reject what they exist to reject."""
        print("== self-test (each must be rejected)")
        bad = [
            ("pod with an unknown field", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                                           "spec": {"containers": [{"name": "a", "image": "i", "imagePullPolicyy": "Always"}]}}),
            ("unknown kind", {"apiVersion": "v1", "kind": "Podd", "metadata": {"name": "x"}}),
            ("Certificate without secretName", {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                                                "metadata": {"name": "x"},
                                                "spec": {"issuerRef": {"name": "i"}, "dnsNames": ["a"]}}),
        ]
        ok = True
        for label, obj in bad:
            self.quiet_failures = []
            self.validate_object(f"self-test {label}", obj)
            got, self.quiet_failures = self.quiet_failures, None
            if got:
                print(f"  ok   self-test: {label} is rejected ({got[0]})")
            else:
                print(f"  SELF-TEST BROKEN: {label} was accepted")
                ok = False
        bad_cfg = {"listen": "127.0.0.1:4000", "providers": [{"name": "p", "api": "openai", "base_url": "x", "tls_verfy": False}]}
        if not list(self.config_validator.iter_errors(bad_cfg)):
            print("  SELF-TEST BROKEN: a config with an unknown provider key was accepted")
            ok = False
        else:
            print("  ok   self-test: a twinroute.yaml with an unknown key is rejected")
        if not ok:
            self.failures += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kube-version", required=True)
    ap.add_argument("--values-schema", required=True)
    ap.add_argument("--set", nargs="+", action="append", metavar=("NAME", "FILE"), default=[])
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    with open(args.values_schema) as f:
        values_schema = json.load(f)
    config_schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": values_schema["definitions"],
        "$ref": "#/definitions/twinrouteConfig",
    }
    run = Run(args.kube_version, config_schema)
    if args.self_test:
        run.self_test()
    for s in args.set:
        if len(s) < 2:
            ap.error("--set needs a NAME and at least one FILE")
        run.run_set(s[0], s[1:])
    print(f"kubernetes-validate: {run.objects} objects checked against Kubernetes "
          f"{args.kube_version}, {run.notes} CRD notes, {run.failures} failures")
    sys.exit(1 if run.failures else 0)


if __name__ == "__main__":
    main()
