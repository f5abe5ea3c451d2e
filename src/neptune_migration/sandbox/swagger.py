"""Hand-written minimal swagger 2.0 specs for the three APIs the neptune 1.x client downloads at start.

Only the read paths are described. bravado (validation off) builds requests from the operation ids and
parameters and converts replies by the declared types, so two things matter: every parameter the client
passes must be declared (bravado refuses unknown ones), and field types must be right (``format: date-time``
turns strings into datetimes, models give attribute access).
"""

from __future__ import annotations

from typing import Any

S = {"type": "string"}
I = {"type": "integer", "format": "int64"}  # noqa: E741 - a one-letter alias reads better in the tables below
F = {"type": "number", "format": "double"}
B = {"type": "boolean"}
DT = {"type": "string", "format": "date-time"}
STRINGS = {"type": "array", "items": S}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/definitions/{name}"}


def arr(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


def model(**props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props}


def q(name: str, schema: dict[str, Any] = S, required: bool = False) -> dict[str, Any]:
    param = {"name": name, "in": "query", "required": required, **schema}
    if schema.get("type") == "array":
        param["collectionFormat"] = "multi"
    return param


def header(name: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "type": "string"}


def body(name: str = "params") -> dict[str, Any]:
    return {"name": name, "in": "body", "required": False, "schema": {"type": "object"}}


def op(op_id: str, params: list[dict[str, Any]], reply: dict[str, Any] | None, produces: str = "application/json"):  # type: ignore[no-untyped-def]
    # "default" lets bravado raise its typed HTTP errors (HTTPNotFound, ...) that the client catches
    responses: dict[str, Any] = {"200": {"description": "ok"}, "default": {"description": "error"}}
    if reply is not None:
        responses["200"]["schema"] = reply
    # the client reaches every operation through the "api" resource, which bravado builds from this tag
    return {"operationId": op_id, "tags": ["api"], "parameters": params, "responses": responses, "produces": [produces]}


def spec(base_path: str, paths: dict[str, dict[str, Any]], definitions: dict[str, Any]) -> dict[str, Any]:
    return {
        "swagger": "2.0",
        "info": {"title": f"neptune sandbox {base_path}", "version": "2.8"},
        # real Neptune specs carry full paths under "/": the client builds download URLs from
        # api_url + an operation's path_name, so the prefix must live in the paths
        "basePath": "/",
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "schemes": ["http", "https"],
        "paths": {base_path + path: item for path, item in paths.items()},
        "definitions": definitions,
    }


# ---------------------------------------------------------------- backend

_PROJECT = {
    "id": S,
    "name": S,
    "organizationName": S,
    "organizationId": S,
    "projectKey": S,
    "version": I,
    "visibility": S,
    "description": S,
}

BACKEND = spec(
    "/api/backend",
    {
        "/v1/clients/config": {
            "get": op("getClientConfig", [header("X-Neptune-Api-Token"), q("alpha")], ref("ClientConfig"))
        },
        "/v1/authorization/oauth-token": {
            "get": op("exchangeApiToken", [header("X-Neptune-Api-Token")], ref("NeptuneOauthToken"))
        },
        "/v1/projects": {
            "get": op(
                "listProjects",
                [
                    q("limit", I),
                    q("offset", I),
                    q("organizationIdentifier"),
                    q("searchTerm"),
                    q("sortBy", STRINGS),
                    q("sortDirection", STRINGS),
                    q("userRelation"),
                    q("viewedUsername"),
                ],
                ref("ProjectListDTO"),
            )
        },
        "/v1/projects/get": {"get": op("getProject", [q("projectIdentifier", required=True)], ref("ProjectDTO"))},
        "/v1/myOrganizations": {"get": op("listOrganizations", [], arr(ref("OrganizationDTO")))},
    },
    {
        "ClientConfig": model(
            apiUrl=S,
            applicationUrl=S,
            pyLibVersions=ref("ClientVersionsConfigDTO"),
            # nested objects must be named definitions: bravado gives inline ones back as dicts, and the
            # client reads them with getattr (a dict would silently turn artifacts off)
            multiPartUpload=ref("MultiPartUploadConfigDTO"),
            artifacts=ref("ArtifactsConfigDTO"),
            sysNameSetByBackend=B,
        ),
        "MultiPartUploadConfigDTO": model(enabled=B),
        "ArtifactsConfigDTO": model(enabled=B, apiVersion=I),
        "ClientVersionsConfigDTO": model(minRecommendedVersion=S, minCompatibleVersion=S, maxCompatibleVersion=S),
        "NeptuneOauthToken": model(accessToken=S, refreshToken=S, username=S),
        "ProjectDTO": model(**_PROJECT),
        "ProjectListDTO": model(entries=arr(ref("ProjectDTO")), matchingItemCount=I, totalItemCount=I),
        "OrganizationDTO": model(id=S, name=S),
    },
)

# ---------------------------------------------------------------- leaderboard

_EXP_ATTR = [q("experimentId", required=True), q("attribute", required=True)]
_VALUES_PAGE = [q("experimentId", required=True), q("attribute", required=True), q("limit", I), q("offset", I)]

LEADERBOARD = spec(
    "/api/leaderboard",
    {
        "/v1/experiments": {"get": op("getExperiment", [q("experimentId", required=True)], ref("Experiment"))},
        "/v1/attributes": {
            "get": op("getExperimentAttributes", [q("experimentId", required=True)], ref("ExperimentAttributes"))
        },
        "/v1/attributes/float": {"get": op("getFloatAttribute", _EXP_ATTR, ref("FloatAttributeDTO"))},
        "/v1/attributes/int": {"get": op("getIntAttribute", _EXP_ATTR, ref("IntAttributeDTO"))},
        "/v1/attributes/bool": {"get": op("getBoolAttribute", _EXP_ATTR, ref("BoolAttributeDTO"))},
        "/v1/attributes/string": {"get": op("getStringAttribute", _EXP_ATTR, ref("StringAttributeDTO"))},
        "/v1/attributes/datetime": {"get": op("getDatetimeAttribute", _EXP_ATTR, ref("DatetimeAttributeDTO"))},
        "/v1/attributes/file": {"get": op("getFileAttribute", _EXP_ATTR, ref("FileAttributeDTO"))},
        "/v1/attributes/stringSet": {"get": op("getStringSetAttribute", _EXP_ATTR, ref("StringSetAttributeDTO"))},
        "/v1/attributes/floatSeries": {"get": op("getFloatSeriesAttribute", _EXP_ATTR, ref("FloatSeriesAttributeDTO"))},
        "/v1/attributes/stringSeries": {
            "get": op("getStringSeriesAttribute", _EXP_ATTR, ref("StringSeriesAttributeDTO"))
        },
        "/v1/attributes/artifact": {"get": op("getArtifactAttribute", _EXP_ATTR, ref("ArtifactAttributeDTO"))},
        "/v1/attributes/series/float": {"get": op("getFloatSeriesValues", _VALUES_PAGE, ref("FloatSeriesValuesDTO"))},
        "/v1/attributes/series/string": {
            "get": op("getStringSeriesValues", _VALUES_PAGE, ref("StringSeriesValuesDTO"))
        },
        "/v1/attributes/series/image": {"get": op("getImageSeriesValues", _VALUES_PAGE, ref("ImageSeriesValuesDTO"))},
        "/v1/attributes/series/image/value": {
            "get": op("getImageSeriesValue", [*_EXP_ATTR, q("index", I, True)], None, "application/octet-stream")
        },
        "/v1/attributes/download": {"get": op("downloadAttribute", _EXP_ATTR, None, "application/octet-stream")},
        "/v1/attributes/fileSet/ls": {
            "get": op("lsFileSetAttribute", [*_EXP_ATTR, q("path")], arr(ref("FileEntryDTO")))
        },
        "/v1/attributes/fileSet/zip": {
            "post": op("prepareForDownloadFileSetAttributeZip", _EXP_ATTR, ref("DownloadPrepareRequestDTO"))
        },
        "/v1/storage/downloadRequest": {
            "get": op("getDownloadPrepareRequest", [q("id", required=True)], ref("DownloadPrepareRequestDTO"))
        },
        "/v1/leaderboard/attributes/search": {
            "post": op(
                "searchLeaderboardAttributes",
                [q("projectIdentifier", required=True), q("search"), q("type", STRINGS), body()],
                ref("LeaderboardAttributesDTO"),
            )
        },
        "/v1/leaderboard/entries/search/": {
            "post": op(
                "searchLeaderboardEntries",
                [q("projectIdentifier", required=True), q("type", STRINGS), body()],
                {"type": "object"},
            )
        },
    },
    {
        "Experiment": model(
            id=S,
            type=S,
            shortId=S,
            organizationName=S,
            organizationId=S,
            projectName=S,
            projectId=S,
            trashed=B,
        ),
        "ExperimentAttributes": model(attributes=arr(ref("AttributeDTO"))),
        "AttributeDTO": model(
            name=S,
            type=S,
            floatProperties=ref("FloatAttributeDTO"),
            intProperties=ref("IntAttributeDTO"),
            boolProperties=ref("BoolAttributeDTO"),
            stringProperties=ref("StringAttributeDTO"),
            datetimeProperties=ref("DatetimeAttributeDTO"),
            stringSetProperties=ref("StringSetAttributeDTO"),
            floatSeriesProperties=ref("FloatSeriesAttributeDTO"),
            stringSeriesProperties=ref("StringSeriesAttributeDTO"),
            imageSeriesProperties=ref("ImageSeriesAttributeDTO"),
            fileProperties=ref("FileAttributeDTO"),
            fileSetProperties=ref("FileSetAttributeDTO"),
            artifactProperties=ref("ArtifactAttributeDTO"),
        ),
        "FloatAttributeDTO": model(attributeName=S, attributeType=S, value=F),
        "IntAttributeDTO": model(attributeName=S, attributeType=S, value=I),
        "BoolAttributeDTO": model(attributeName=S, attributeType=S, value=B),
        "StringAttributeDTO": model(attributeName=S, attributeType=S, value=S),
        "DatetimeAttributeDTO": model(attributeName=S, attributeType=S, value=DT),
        "StringSetAttributeDTO": model(attributeName=S, attributeType=S, values=STRINGS),
        "FloatSeriesAttributeDTO": model(
            attributeName=S, attributeType=S, last=F, lastStep=F, min=F, max=F, average=F, variance=F
        ),
        "StringSeriesAttributeDTO": model(attributeName=S, attributeType=S, last=S, lastStep=F),
        "ImageSeriesAttributeDTO": model(attributeName=S, attributeType=S, lastStep=F),
        "FileAttributeDTO": model(attributeName=S, attributeType=S, name=S, ext=S, size=I, mimeType=S),
        "FileSetAttributeDTO": model(attributeName=S, attributeType=S, size=I),
        "ArtifactAttributeDTO": model(attributeName=S, attributeType=S, hash=S),
        "FloatPointValueDTO": model(step=F, timestampMillis=I, value=F),
        "StringPointValueDTO": model(step=F, timestampMillis=I, value=S),
        "FloatSeriesValuesDTO": model(totalItemCount=I, values=arr(ref("FloatPointValueDTO"))),
        "StringSeriesValuesDTO": model(totalItemCount=I, values=arr(ref("StringPointValueDTO"))),
        "ImageSeriesValuesDTO": model(totalItemCount=I),
        "FileEntryDTO": model(name=S, size=I, mtime=DT, fileType=S),
        "DownloadPrepareRequestDTO": model(id=S, downloadUrl=S),
        "LeaderboardAttributesDTO": model(entries=arr(ref("AttributeDefinitionDTO"))),
        "AttributeDefinitionDTO": model(name=S, type=S),
    },
)

# ---------------------------------------------------------------- artifacts

ARTIFACTS = spec(
    "/api/artifacts",
    {
        "/v1/artifacts/files": {
            "get": op(
                "listArtifactFiles",
                [q("projectIdentifier", required=True), q("hash", required=True)],
                ref("ArtifactFilesDTO"),
            )
        },
    },
    {
        "ArtifactFilesDTO": model(files=arr(ref("ArtifactFileDTO"))),
        "ArtifactFileDTO": model(filePath=S, fileHash=S, type=S, size=I, metadata=arr(ref("ArtifactFileMetadataDTO"))),
        "ArtifactFileMetadataDTO": model(key=S, value=S),
    },
)

SPECS = {"backend": BACKEND, "leaderboard": LEADERBOARD, "artifacts": ARTIFACTS}
