"""A connector runtime on each object store (a local folder, or the real SeaweedFS S3 server).

For tests parametrised over ["local", "s3"]: `runtime_on(request, tmp_path, prefix)` builds the
runtime the parameter names, with its own bucket for S3. It only builds; callers close.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings


def runtime_on(request: pytest.FixtureRequest, tmp_path: Path, bucket_prefix: str) -> Runtime:
    extra: dict[str, Any] = {}
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        extra = {
            "object_store": "s3",
            "s3_endpoint": server.endpoint,
            "s3_access_key": server.access_key,
            "s3_secret_key": server.secret_key,
            "s3_bucket": f"{bucket_prefix}-{tmp_path.name[-20:].lower().replace('_', '-')}",
            "s3_secure": False,
        }
    return build_runtime(load_settings(data_dir=tmp_path / "data", **extra))
