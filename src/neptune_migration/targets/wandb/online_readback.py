"""Online read-back through `wandb.Api`: the same `WandbRunData` the offline reader returns.

History is read page by page with the `history(minStep, maxStep, samples)` field of the Run type (each page
asks for no more rows than its step window holds, so the server never samples). Artifact files are listed
from their manifests (size and W&B's MD5 digest); payload bytes are downloaded and hashed only when
`download=True`, since that moves every byte again.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

from neptune_migration.targets.wandb.readback import ArtifactFile, WandbRunData, _add_row, _string_series
from neptune_migration.targets.wandb.server import with_backoff

_HISTORY_PAGE = """
query NeptuneMigrationHistoryPage($project: String!, $entity: String!, $name: String!, $minStep: Int64!,
                                  $maxStep: Int64!, $samples: Int!) {
    project(name: $project, entityName: $entity) {
        run(name: $name) { history(minStep: $minStep, maxStep: $maxStep, samples: $samples) }
    }
}
"""


def _graphql(api: Any, query: str, variables: dict[str, Any]) -> Any:
    return with_backoff(lambda: api._service_api.execute_graphql(query, variables))


def read_online(
    api: Any, entity: str | None, project: str, run_id: str, page_steps: int = 1000, download: bool = False
) -> WandbRunData:
    path = f"{entity}/{project}/{run_id}" if entity else f"{project}/{run_id}"
    run = with_backoff(lambda: api.run(path))
    raw = run.rawconfig or {}
    started = None
    internal = raw.get("_wandb") or {}
    internal = internal.get("value", internal) if isinstance(internal, dict) else {}
    for env in (internal.get("e") or {}).values():
        started = env.get("startedAt") or started
    history: dict[str, list[tuple[float, Any, int]]] = {}
    rows = 0
    last = int((run._attrs.get("historyKeys") or {}).get("lastStep", -1))
    variables = {"project": project, "entity": run.entity, "name": run_id}
    lo = 0
    while lo <= last:
        hi = lo + page_steps
        page = _graphql(api, _HISTORY_PAGE, {**variables, "minStep": lo, "maxStep": hi, "samples": page_steps})
        for line in page["project"]["run"]["history"]:
            _add_row(history, json.loads(line, parse_int=_int) if isinstance(line, str) else line)
            rows += 1
        lo = hi
    summary = dict(run.summary_metrics)
    artifacts: dict[str, dict[str, Any]] = {}
    fetched: dict[tuple[str, str], bytes] = {}
    for art in with_backoff(lambda: list(run.logged_artifacts())):
        name = art.name.split(":", 1)[0]
        fetch = download or art.type == "neptune-string-series"
        urls = _file_urls(api, run.entity, project, name, f"v{art.version.lstrip('v')}") if fetch else {}
        files: dict[str, ArtifactFile] = {}
        for entry_path, entry in art.manifest.entries.items():
            sha = ""
            if fetch:
                blob = _get(api, urls[entry_path])
                sha = hashlib.sha256(blob).hexdigest()
                if base64.b64encode(hashlib.md5(blob, usedforsecurity=False).digest()).decode() != entry.digest:
                    sha = "md5-mismatch"
                if art.type == "neptune-string-series":
                    fetched[(name, entry_path)] = blob
            files[entry_path] = ArtifactFile(int(entry.size or 0), sha, entry.digest)
        artifacts[name] = {"type": art.type, "metadata": dict(art.metadata or {}), "files": files}

    def read_run_file(rel: str) -> bytes:
        f = with_backoff(lambda: run.file(rel))
        return _get(api, f.url)

    data = WandbRunData(
        run_id=run.id,
        entity=run.entity,
        project=run.project,
        name=run.name,
        group=run.group or "",
        notes=run.notes or "",
        tags=list(run.tags or []),
        config={k: v for k, v in run.config.items()},
        summary=summary,
        start_time_ms=_iso_ms(started),
        runtime_s=(summary.get("_wandb") or {}).get("runtime"),
        state=run.state,
        history=history,
        history_rows=rows,
        artifacts=artifacts,
    )
    data.string_series = _string_series(summary, read_run_file, artifacts, None, lambda n, e: fetched[(n, e)])
    return data


_FILE_URLS = """
query NeptuneMigrationArtifactFiles($entity: String!, $project: String!, $collection: String!, $alias: String!,
                                    $cursor: String, $perPage: Int) {
  project(name: $project, entityName: $entity) {
    artifactCollection(name: $collection) {
      artifactMembership(aliasName: $alias) {
        files(after: $cursor, first: $perPage) {
          pageInfo { endCursor hasNextPage }
          edges { node { name directUrl } }
        }
      }
    }
  }
}
"""


def _file_urls(api: Any, entity: str, project: str, collection: str, alias: str) -> dict[str, str]:
    out: dict[str, str] = {}
    cursor = None
    while True:
        res = _graphql(api, _FILE_URLS, {"entity": entity, "project": project, "collection": collection,
                                         "alias": alias, "cursor": cursor, "perPage": 1000})
        files = res["project"]["artifactCollection"]["artifactMembership"]["files"]
        for edge in files["edges"]:
            out[edge["node"]["name"]] = edge["node"]["directUrl"]
        if not files["pageInfo"]["hasNextPage"]:
            return out
        cursor = files["pageInfo"]["endCursor"]


def _get(api: Any, url: str) -> bytes:
    """Fetch a payload. The key is sent only to the W&B host itself, never to a signed object-store URL."""
    import requests

    base = urlparse(api.settings["base_url"])
    target = urlparse(url)
    auth = ("api", api.api_key) if (target.scheme, target.netloc) == (base.scheme, base.netloc) else None

    def fetch() -> bytes:
        resp = requests.get(url, auth=auth, timeout=300)
        resp.raise_for_status()
        return resp.content

    return with_backoff(fetch)


def _int(text: str) -> int | float:
    # wandb-core writes the float -0.0 as `-0`; JSON's integer reading would drop the sign.
    return -0.0 if text == "-0" else int(text)


def _iso_ms(text: str | None) -> int | None:
    if not text:
        return None
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
