"""X API v2 error bodies as the simulator serves them: RFC 7807 problems (`application/problem+json`) with
X's api.twitter.com problem URIs, the 400 invalid-request body, and the fixed 401/403 bodies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dm_pipeline.simulator.faults import Reply

PROBLEM = "application/problem+json"
INVALID_REQUEST = "https://api.twitter.com/2/problems/invalid-request"
NOT_AUTHORIZED = "https://api.twitter.com/2/problems/not-authorized-for-resource"


def problem(status: int, title: str, detail: str, type_: str = "about:blank") -> Reply:
    return Reply(status, {"title": title, "detail": detail, "type": type_, "status": status},
                 content_type=PROBLEM)


def invalid_request(errors: list[tuple[str, str, str]]) -> Reply:
    """X's 400 body; `errors` are (parameter, value, message)."""
    return Reply(400, {
        "errors": [{"parameters": {p: [v]}, "message": m} for p, v, m in errors],
        "title": "Invalid Request", "detail": "One or more parameters to your request was invalid.",
        "type": INVALID_REQUEST}, content_type=PROBLEM)


def bad_token_error(value: str) -> tuple[str, str, str]:
    return ("pagination_token", value,
            f"The `pagination_token` query parameter value [{value}] is not a valid token.")


UNAUTHORIZED = {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}
CLIENT_FORBIDDEN = {
    "client_id": "29427710",
    "detail": "When authenticating requests to the Twitter API v2 endpoints, you must use keys and tokens "
              "from a Twitter developer App that is attached to a Project. You can create a project via "
              "the developer portal.",
    "registration_url": "https://developer.x.com/en/portal/product",
    "title": "Client Forbidden",
    "required_enrollment": "Appropriate Level of API Access",
    "reason": "client-not-enrolled",
    "type": "https://api.twitter.com/2/problems/client-forbidden",
}
# An app-only bearer token on a user-context route: X's 403 problem.
UNSUPPORTED_AUTHENTICATION = {
    "title": "Unsupported Authentication",
    "detail": "Authenticating with OAuth 2.0 Application-Only is forbidden for this endpoint. Supported "
              "authentication types are [OAuth 1.0a User Context, OAuth 2.0 User Context].",
    "type": "https://api.twitter.com/2/problems/unsupported-authentication",
    "status": 403,
}


def usage_capped(params: Mapping[str, Any]) -> Reply:
    """429 when the app's usage cap is spent (xdevplatform/xdk#25): no `status` field, and the rate-limit
    headers still show the window's own remaining requests. Params `period` (Daily|Monthly), `scope`
    (Account|Product)."""
    period, scope = str(params.get("period", "Monthly")), str(params.get("scope", "Product"))
    return Reply(429, {"account_id": "1480571917493288962", "product_name": "standard-basic",
                       "title": "UsageCapExceeded", "period": period, "scope": scope,
                       "detail": f"Usage cap exceeded: {period} {scope.lower()} cap",
                       "type": "https://api.twitter.com/2/problems/usage-capped"}, content_type=PROBLEM)


def not_participant(parameter: str, value: str, detail: str) -> Reply:
    """403: the account may not read this conversation (a ResourceUnauthorizedProblem)."""
    return Reply(403, {"value": value, "detail": detail, "title": "Authorization Error", "resource_type": "user",
                       "parameter": parameter, "resource_id": value, "section": "data", "type": NOT_AUTHORIZED,
                       "status": 403}, content_type=PROBLEM)


def path_error(name: str, value: str, pattern: str) -> tuple[str, str, str]:
    return (name, value, f"The `{name}` query parameter value [{value}] does not match {pattern}")
