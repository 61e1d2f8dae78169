"""The repo's deployment templates must satisfy the official schemas, checked offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft4Validator
from referencing import Registry
from referencing.jsonschema import DRAFT4, DRAFT7

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
TEMPLATES = sorted(REPO.glob("deployment*.template.json"))


def _registry() -> Registry[Any]:
    resources = []
    for path in SCHEMAS.glob("*.json"):
        contents = json.loads(path.read_text(encoding="utf-8"))
        uri = contents.get("$id") or contents.get("id")
        spec = DRAFT7 if "$id" in contents else DRAFT4
        resources.append((uri, spec.create_resource(contents)))
    return Registry().with_resources(resources)


def _template_validator() -> Draft4Validator:
    schema = json.loads((SCHEMAS / "azure-iot-edge-deployment-template-3.0.json").read_text(encoding="utf-8"))
    return Draft4Validator(schema, registry=_registry())


def test_every_template_is_found() -> None:
    assert REPO / "deployment.template.json" in TEMPLATES


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_validates_against_template_3_0(template: Path) -> None:
    document = json.loads(template.read_text(encoding="utf-8"))
    errors = sorted(_template_validator().iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_validator_refuses_edgehub_schema_1_2_template() -> None:
    # Guards the decision in schemas/README.md: a 1.2 edgeHub must be caught, not silently accepted.
    document = json.loads((REPO / "deployment.template.json").read_text(encoding="utf-8"))
    document["modulesContent"]["$edgeHub"]["properties.desired"]["schemaVersion"] = "1.2"
    assert list(_template_validator().iter_errors(document))
