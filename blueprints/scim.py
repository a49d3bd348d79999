"""The SCIM 2.0 endpoint Microsoft Entra provisions users and groups through (/scim/v2/, RFC 7643/7644).

The organisation is the bearer token's alone: no cookie, no CSRF token (exempt in app.py), its own rate limit and
body limit. Views parse the body with scim2-models under Entra's policy, call one service of
domain/provisioning.py and serialise what it returns; errors are SCIM Error bodies with a scimType. Nothing from a
body, a filter or a path is logged: ids and scimTypes only.
"""
from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, g, json, request, url_for
from werkzeug.exceptions import HTTPException

from domain import provisioning

if TYPE_CHECKING:
    from pydantic import ValidationError

    from domain.provisioning import EntraUser

log = logging.getLogger(__name__)

# scim2-models and pydantic are imported at the first SCIM request (domain/provisioning.py says why).
scim = provisioning.scim
pydantic = provisioning.Imported("pydantic")
SCIM_JSON = "application/scim+json"
ENTERPRISE = provisioning.ENTERPRISE


@functools.cache
def entra_policy() -> scim.ScimPolicy:
    """Entra's deviations (docs/scim.md): a Remove of members names them in `value`; an Add or Replace through a value
    filter (emails[type eq "work"].value) that matches no entry creates it. Unknown attributes are refused."""
    return scim.ScimPolicy(remove_value_as_filter=scim.ScimPolicy.RemoveValue.apply,
                           unmatched_path_filter=scim.ScimPolicy.UnmatchedPathFilter.create)


def answering_scim_errors(view):
    """The library's exceptions (and pydantic's refusals of a body) as SCIM Error bodies. A wrapper rather than
    bp.errorhandler(), which would need the exception classes, and so the library, when the app is built."""

    @functools.wraps(view)
    def answering(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except scim.SCIMException as e:
            return scim_error(e)
        except pydantic.ValidationError as e:
            return scim_error(_from_validation(e))

    return answering


class _Blueprint(Blueprint):
    """Every view of the endpoint answers SCIM errors (answering_scim_errors)."""

    def add_url_rule(self, rule, endpoint=None, view_func=None, **options):
        super().add_url_rule(rule, endpoint, view_func and answering_scim_errors(view_func), **options)


bp = _Blueprint("scim", __name__, url_prefix="/scim/v2")


def scim_response(body: dict[str, Any] | None, status: int = 200, *, location: str | None = None) -> Response:
    response = current_app.response_class(json.dumps(body) if body is not None else b"", status=status,
                                          mimetype=SCIM_JSON if body is not None else None)
    if location:
        response.headers["Location"] = location
    return response


def scim_error(exception: scim.SCIMException) -> Response:
    error = exception.to_error().model_dump(mode="json", exclude_none=True)
    log.info("SCIM %s %s refused: %s %s", request.method, request.endpoint, exception.status,
             exception.scim_type or "-")
    response = scim_response(error, exception.status)
    if exception.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="scim"'
    return response


def _error(status: int, detail: str) -> scim.SCIMException:
    error = scim.SCIMException(detail=detail)
    error.status = status
    return error


@bp.errorhandler(HTTPException)
@bp.errorhandler(429)  # by code too: the app's own 429 page is registered by code, which Flask tries first
@bp.errorhandler(500)
def http_error(e: HTTPException):
    # 405, 413 (the body limit), 429 (the rate limit) and the like, as SCIM errors rather than the portal's page.
    if e.code == 413:
        return scim_error(scim.PayloadTooLargeException(detail="The request body is too large."))
    if e.code == 429:
        response = scim_error(_error(429, "Too many requests: slow down."))
        response.headers.extend((k, v) for k, v in (e.get_headers() or []) if k.lower() == "retry-after")
        return response
    if not isinstance(e, HTTPException) or (e.code or 500) >= 500:
        return scim_error(_error(500, "The portal could not finish this request."))
    return scim_error(_error(e.code or 400, e.name))


def _from_validation(e: ValidationError) -> scim.SCIMException:
    """A model refused the body: unknown attributes are invalidSyntax, anything else invalidValue (or the
    scimType a SCIM check inside the model names). Only attribute names go into the detail, never values."""
    errors = e.errors(include_input=False, include_url=False)
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ())) or "the body"
        if error["type"] == "extra_forbidden":
            return scim.InvalidSyntaxException(detail=f"Unknown attribute: {where}.")
        scim_type = (error.get("ctx") or {}).get("scim_type")
        if scim_type and scim_type != "invalidValue":
            exception = scim.SCIMException(detail=f"Not accepted: {where}.")
            exception.scim_type, exception.status = scim_type, int((error.get("ctx") or {}).get("status") or 400)
            return exception
    where = ".".join(str(part) for part in errors[0].get("loc", ())) if errors else ""
    return scim.InvalidValueException(detail=f"Invalid or missing value: {where or 'the body'}.")


@bp.before_request
@answering_scim_errors
def authenticate():
    """The bearer token names the organisation; the body limit is the endpoint's own."""
    request.max_content_length = current_app.config["SCIM_MAX_CONTENT_LENGTH"]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    org = provisioning.organization_for_token(token.strip()) if scheme.lower() == "bearer" else None
    if org is None:
        raise scim.UnauthorizedException(
            detail="A valid bearer token is required (Settings → SECURITY → User provisioning).")
    g.scim_org = org
    provisioning.touch(org)


def _body() -> dict[str, Any]:
    data = request.get_json(force=True, silent=True)
    if not isinstance(data, dict):
        raise scim.InvalidSyntaxException(detail="The body is not a JSON object.")
    return data


def _number(name: str, default: int | None) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise scim.InvalidValueException(detail=f"{name} is not an integer.") from None


def _response_parameters(model: type) -> scim.ResponseParameters:
    wanted = {k: v for k, v in request.args.items() if k in ("attributes", "excludedAttributes")}
    if not wanted:
        return _all_attributes(model)
    return provisioning.specialised(scim.ResponseParameters, model).model_validate(wanted)


@functools.cache
def _all_attributes(model: type) -> scim.ResponseParameters:
    """No attributes nor excludedAttributes (nearly every request): validated once, only read by the dumps."""
    return provisioning.specialised(scim.ResponseParameters, model).model_validate({})


def _manager(value: Any) -> Any:
    """Entra may send the manager as the bare id of a user: wrap it as {"value": id, "$ref": its URL}."""
    if isinstance(value, str):
        value = {"value": value}
    if isinstance(value, dict) and isinstance(value.get("value"), str) and "$ref" not in value:
        value = {**value, "$ref": url_for("scim.user", scim_id=value["value"], _external=True)}
    return value


def _entra_user(body: dict[str, Any]) -> dict[str, Any]:
    extension = body.get(ENTERPRISE)
    if isinstance(extension, dict) and "manager" in extension:
        body = {**body, ENTERPRISE: {**extension, "manager": _manager(extension["manager"])}}
    return body


def _entra_patch(body: dict[str, Any]) -> dict[str, Any]:
    operations = body.get("Operations")
    if not isinstance(operations, list):
        return body
    fixed = []
    for operation in operations:
        if isinstance(operation, dict) and str(operation.get("path", "")).lower() == f"{ENTERPRISE}:manager".lower():
            operation = {**operation, "value": _manager(operation.get("value"))}
        elif isinstance(operation, dict) and operation.get("path") is None and isinstance(operation.get("value"), dict):
            operation = {**operation, "value": _entra_user(operation["value"])}
        fixed.append(operation)
    return {**body, "Operations": fixed}


def _user_body(context: scim.Context) -> EntraUser:
    with entra_policy():
        return provisioning.entra_user().model_validate(_entra_user(_body()), scim_ctx=context)


def _located(resource: scim.Resource, endpoint: str) -> scim.Resource:
    resource.meta.location = url_for(endpoint, scim_id=resource.id, _external=True)
    return resource


# -- discovery ------------------------------------------------------------------------------------------------------

@bp.get("/ServiceProviderConfig")
def service_provider_config():
    config = scim.ServiceProviderConfig(
        documentation_uri=None,
        patch=scim.Patch(supported=True), bulk=scim.Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=scim.Filter(supported=True, max_results=provisioning.MAX_RESULTS),
        change_password=scim.ChangePassword(supported=False), sort=scim.Sort(supported=False),
        etag=scim.ETag(supported=False),
        authentication_schemes=[scim.AuthenticationScheme(
            type="oauthbearertoken", name="Bearer token", primary=True,
            description="The token from Settings → SECURITY → User provisioning (SCIM).")])
    return scim_response(config.model_dump(scim_ctx=scim.Context.RESOURCE_QUERY_RESPONSE))


def _resource_types() -> list[scim.ResourceType]:
    return [scim.ResourceType.from_resource(provisioning.entra_user()), scim.ResourceType.from_resource(scim.Group)]


def _schemas() -> list[scim.Schema]:
    return [scim.User.to_schema(), scim.EnterpriseUser.to_schema(), scim.Group.to_schema()]


def _listed(model: type, items: list[Any]) -> Response:
    listed = provisioning.specialised(scim.ListResponse, model)(total_results=len(items), start_index=1,
                                                                items_per_page=len(items), resources=items)
    return scim_response(listed.model_dump(scim_ctx=scim.Context.SEARCH_RESPONSE))


@bp.get("/ResourceTypes")
def resource_types():
    return _listed(scim.ResourceType, _resource_types())


@bp.get("/ResourceTypes/<name>")
def resource_type(name: str):
    found = next((t for t in _resource_types() if t.id == name), None)
    if found is None:
        raise scim.NotFoundException(detail="No such resource type.")
    return scim_response(found.model_dump(scim_ctx=scim.Context.RESOURCE_QUERY_RESPONSE))


@bp.get("/Schemas")
def schemas():
    return _listed(scim.Schema, _schemas())


@bp.get("/Schemas/<path:urn>")
def schema(urn: str):
    found = next((s for s in _schemas() if s.id == urn), None)
    if found is None:
        raise scim.NotFoundException(detail="No such schema.")
    return scim_response(found.model_dump(scim_ctx=scim.Context.RESOURCE_QUERY_RESPONSE))


# -- users ----------------------------------------------------------------------------------------------------------

def _user_json(resource: EntraUser, context: scim.Context, parameters: scim.ResponseParameters | None = None):
    return _located(resource, "scim.user").model_dump(scim_ctx=context, response_parameters=parameters)


@bp.get("/Users")
def users():
    model = provisioning.entra_user()
    parameters = _response_parameters(model)
    total, found = provisioning.find_users(g.scim_org, request.args.get("filter"), _number("startIndex", 1),
                                           _number("count", None))
    listed = provisioning.specialised(scim.ListResponse, model)(
        total_results=total, start_index=max(_number("startIndex", 1), 1), items_per_page=len(found),
        resources=[_located(r, "scim.user") for r in found])
    return scim_response(listed.model_dump(scim_ctx=scim.Context.SEARCH_RESPONSE, response_parameters=parameters))


@bp.post("/Users")
def create_user():
    created = provisioning.create_user(g.scim_org, _user_body(scim.Context.RESOURCE_CREATION_REQUEST))
    body = _user_json(created, scim.Context.RESOURCE_CREATION_RESPONSE)
    return scim_response(body, 201, location=body["meta"]["location"])


@bp.get("/Users/<scim_id>")
def user(scim_id: str):
    return scim_response(_user_json(provisioning.get_user(g.scim_org, scim_id), scim.Context.RESOURCE_QUERY_RESPONSE,
                                    _response_parameters(provisioning.entra_user())))


@bp.put("/Users/<scim_id>")
def replace_user(scim_id: str):
    replaced = provisioning.replace_user(g.scim_org, scim_id, _user_body(scim.Context.RESOURCE_REPLACEMENT_REQUEST))
    return scim_response(_user_json(replaced, scim.Context.RESOURCE_REPLACEMENT_RESPONSE))


@bp.patch("/Users/<scim_id>")
def patch_user(scim_id: str):
    body = _entra_patch(_body())
    with entra_policy():
        patch = provisioning.specialised(scim.PatchOp, provisioning.entra_user()).model_validate(
            body, scim_ctx=scim.Context.RESOURCE_PATCH_REQUEST)
        patched = provisioning.patch_user(g.scim_org, scim_id, patch)
    return scim_response(_user_json(patched, scim.Context.RESOURCE_PATCH_RESPONSE))


@bp.delete("/Users/<scim_id>")
def delete_user(scim_id: str):
    provisioning.delete_user(g.scim_org, scim_id)
    return scim_response(None, 204)


# -- groups ---------------------------------------------------------------------------------------------------------

def _with_members(parameters: scim.ResponseParameters) -> bool:
    excluded = {a.casefold() for a in parameters.excluded_attributes or []}
    wanted = {a.casefold() for a in parameters.attributes or []}
    return "members" not in excluded and (not wanted or "members" in wanted)


def _group_body(context: scim.Context) -> scim.Group:
    with entra_policy():
        return scim.Group.model_validate(_body(), scim_ctx=context)


@bp.get("/Groups")
def groups():
    parameters = _response_parameters(scim.Group)
    total, found = provisioning.find_groups(g.scim_org, request.args.get("filter"), _number("startIndex", 1),
                                            _number("count", None), members=_with_members(parameters))
    listed = provisioning.specialised(scim.ListResponse, scim.Group)(
        total_results=total, start_index=max(_number("startIndex", 1), 1), items_per_page=len(found),
        resources=[_located(r, "scim.group") for r in found])
    return scim_response(listed.model_dump(scim_ctx=scim.Context.SEARCH_RESPONSE, response_parameters=parameters))


@bp.post("/Groups")
def create_group():
    created = provisioning.create_group(g.scim_org, _group_body(scim.Context.RESOURCE_CREATION_REQUEST))
    body = _located(created, "scim.group").model_dump(scim_ctx=scim.Context.RESOURCE_CREATION_RESPONSE)
    return scim_response(body, 201, location=body["meta"]["location"])


@bp.get("/Groups/<scim_id>")
def group(scim_id: str):
    parameters = _response_parameters(scim.Group)
    found = provisioning.get_group(g.scim_org, scim_id, members=_with_members(parameters))
    return scim_response(_located(found, "scim.group").model_dump(scim_ctx=scim.Context.RESOURCE_QUERY_RESPONSE,
                                                                  response_parameters=parameters))


@bp.put("/Groups/<scim_id>")
def replace_group(scim_id: str):
    replaced = provisioning.replace_group(g.scim_org, scim_id, _group_body(scim.Context.RESOURCE_REPLACEMENT_REQUEST))
    return scim_response(_located(replaced, "scim.group").model_dump(
        scim_ctx=scim.Context.RESOURCE_REPLACEMENT_RESPONSE))


@bp.patch("/Groups/<scim_id>")
def patch_group(scim_id: str):
    body = _body()
    with entra_policy():
        patch = provisioning.specialised(scim.PatchOp, scim.Group).model_validate(
            body, scim_ctx=scim.Context.RESOURCE_PATCH_REQUEST)
        provisioning.patch_group(g.scim_org, scim_id, patch)
    return scim_response(None, 204)


@bp.delete("/Groups/<scim_id>")
def delete_group(scim_id: str):
    provisioning.delete_group(g.scim_org, scim_id)
    return scim_response(None, 204)


@bp.route("/<path:anything>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown(anything: str):
    raise scim.NotFoundException(detail="No such endpoint.")
