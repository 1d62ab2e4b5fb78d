"""The JSON Schema of the manifest, made from the pydantic models.

``sprites schema`` prints it; ``schema/sprites.schema.json`` in the source
tree is the same document (a test keeps them equal), so editors can validate
and complete manifests: start a manifest with
``# yaml-language-server: $schema=<path or URL of sprites.schema.json>``.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:sprites:manifest:v1"
TITLE = "sprites manifest"


def manifest_schema() -> dict[str, Any]:
    from reconciler.models.manifest import Manifest

    generated = Manifest.model_json_schema()
    generated.pop("title", None)
    # Sprite names are keys: a key that is not a valid name is an error too.
    generated["properties"]["sprites"].setdefault("additionalProperties", False)
    return {"$schema": SCHEMA_DIALECT, "$id": SCHEMA_ID, "title": TITLE, **generated}


def schema_text() -> str:
    """The schema as the file ships it: indented, keys in model order, final newline."""
    return json.dumps(manifest_schema(), indent=2, ensure_ascii=False) + "\n"
