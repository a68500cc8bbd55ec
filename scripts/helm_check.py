#!/usr/bin/env python3
"""Renders the Helm chart with Helm's own engine and validates every object offline.

    helm_check.py CHART VALUES_JSON [KUBERNETES_VERSION[,KUBERNETES_VERSION...]]

Helm: the PyPI package helm-python-sdk (Helm v4's Go SDK behind a C ABI; no helm
binary, no cluster: `lookup` finds nothing). Schemas: the PyPI package
kubernetes-validate (the Kubernetes API's JSON schemas for many versions, bundled),
in strict mode, so an unknown field is an error too. Both are installed by
scripts/test.sh into its virtual environment.

Prints one JSON object: {"objects": [...], "notes": "...", "lint": [...]}.
Exits 1 when the chart does not render (Helm's message on stderr, e.g. a `fail`),
2 when an object is invalid for the Kubernetes version (each problem on stderr).
"""

import json
import sys

import helm_python as helm
import kubernetes_validate
import yaml


def _version(text: str) -> tuple:
    return tuple(int(part) for part in text.split("."))


def main() -> int:
    chart_dir, values_json = sys.argv[1], sys.argv[2]
    versions = (sys.argv[3] if len(sys.argv) > 3 else kubernetes_validate.latest_version()).split(",")
    values = json.loads(values_json)
    chart = helm.Chart.load(chart_dir)
    try:
        chart.validate_schema(values)
        rendered = chart.render(values, name="rampart", namespace="rampart", is_install=True)
    except helm.HelmError as e:
        print(f"render: {e}", file=sys.stderr)
        return 1
    objects, problems, notes = [], [], ""
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            objects.append(doc)
            where = f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            # An object the chart renders only for a cluster of some version or later
            # (its template checks .Capabilities.KubeVersion, and says so in this
            # annotation) is not checked against older schemas; `helm lint` with that
            # older version renders the chart without it.
            needs = (doc.get("metadata", {}).get("annotations") or {}).get("rampart.dev/requires-kubernetes")
            for version in versions:
                if needs and _version(version) < _version(needs):
                    continue
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    at = ".".join(map(str, e.path))
                    problems.append(f"{where}: Kubernetes {version}: {at}: {e.message}")
                except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
                    problems.append(f"{where}: no schema in Kubernetes {version}: {e}")
    lint = []
    for version in versions:
        report = helm.lint(chart_dir, values, strict=True, namespace="rampart", kube_version=f"v{version}")
        lint += [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    print(json.dumps({"objects": objects, "notes": notes, "lint": lint, "kubernetes": versions}))
    for p in problems:
        print(p, file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
