"""X's OAuth 2.0 consent page and `GET /2/users/me`: what `dm-pipeline accounts connect` talks to.

Routes (names for faults and logs):

- `oauth_authorize`  GET /i/oauth2/authorize (also /2/oauth2/authorize, the spec's authorizationUrl): checks
                     the authorization request (response_type=code, client_id, redirect_uri, scope, state,
                     code_challenge, code_challenge_method S256|plain) and answers an HTML page with the
                     scopes asked, a "signed in as" choice of the world's accounts, and Approve / Deny. A bad
                     request is a 400 HTML page that never redirects (as X's "Something went wrong").
                     With `oauth.auto_approve` it redirects at once, approved as `oauth.login` (for API tests).
- `oauth_consent`    POST of that page's form: Approve redirects (302) to `redirect_uri?code=…&state=…`, Deny
                     to `redirect_uri?error=access_denied&state=…`. Each page answers once.
- `users_me`         GET /2/users/me (Bearer: a world token or an OAuth access token): `{"data": {id, name,
                     username, …user.fields}}`; `user.fields`, `expansions`, `tweet.fields` checked against
                     the spec's enums (400 invalid-request otherwise). Not rate limited here.

The consent page is not X's markup: it is the smallest page a person (or a browser test) can answer.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from dm_pipeline.simulator.faults import COMMON, TRANSPORT, Ctx, Reply, Route
from dm_pipeline.simulator.oauth import AuthRequest, OAuthServer
from dm_pipeline.simulator.x_fields import TWEET_FIELDS, USER_FIELDS
from dm_pipeline.simulator.x_problems import invalid_request

if TYPE_CHECKING:
    from dm_pipeline.simulator.world import World


class XHost(Protocol):
    """What these routes need of the X provider (`x_api.XApi`, which imports this module)."""

    @property
    def world(self) -> World: ...
    @property
    def oauth(self) -> OAuthServer: ...

AUTHORIZE = r"/(?:i|2)/oauth2/authorize"
HTML = "text/html; charset=utf-8"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# X's OAuth 2.0 scopes as the OpenAPI spec's OAuth2UserToken flow lists them (the OpenAPI test compares).
SCOPES: Mapping[str, str] = {
    "block.read": "View accounts you have blocked.",
    "bookmark.read": "Read your bookmarked Posts.",
    "bookmark.write": "Create and delete your bookmarks.",
    "dm.read": "Read all your Direct Messages.",
    "dm.write": "Send and manage your Direct Messages.",
    "follows.read": "View accounts you follow and accounts following you.",
    "follows.write": "Follow and unfollow accounts on your behalf.",
    "like.read": "View Posts you have liked and likes you can see.",
    "like.write": "Like and unlike Posts on your behalf.",
    "list.read": "View Lists, members, and followers of Lists you created or are a member of, including private "
                 "Lists.",
    "list.write": "Create and manage Lists on your behalf.",
    "media.write": "Upload media, such as photos and videos, on your behalf.",
    "mute.read": "View accounts you have muted.",
    "mute.write": "Mute and unmute accounts on your behalf.",
    "offline.access": "Request a refresh token for the app.",
    "space.read": "View all Spaces you have access to.",
    "timeline.read": "View all Custom Timelines you can see, including public Custom Timelines from other "
                     "developers.",
    "tweet.moderate.write": "Hide and unhide replies to your Posts.",
    "tweet.read": "View all Posts you can see, including those from protected accounts.",
    "tweet.write": "Post and repost on your behalf.",
    "users.read": "View any account you can see, including protected accounts.",
}
USER_EXPANSIONS = ("affiliation.user_id", "most_recent_tweet_id", "pinned_tweet_id")
CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")           # base64url of a SHA-256 digest, no padding
CONSENT_FAULTS = TRANSPORT
USERS_ME_FAULTS = COMMON | {"403"}


def consent_routes(api: XHost) -> dict[tuple[str, str], Route]:
    return {
        ("GET", AUTHORIZE): Route("oauth_authorize", lambda ctx: authorize(api.oauth, api, ctx), CONSENT_FAULTS,
                                  limited=False),
        ("POST", AUTHORIZE): Route("oauth_consent", lambda ctx: consent(api.oauth, api, ctx), CONSENT_FAULTS,
                                   limited=False),
        ("GET", r"/2/users/me"): Route("users_me", lambda ctx: users_me(api, ctx), USERS_ME_FAULTS, limited=False),
    }


# ------------------------------------------------------------------------------------------- pages
def _page(status: int, title: str, body: str) -> Reply:
    doc = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           '<meta name="viewport" content="width=device-width, initial-scale=1"></head>\n'
           f'<body><main>\n{body}\n</main></body></html>\n')
    return Reply(status, body=doc.encode(), content_type=HTML, headers=dict(NO_STORE))


def _refused(reason: str) -> Reply:
    """X's dead end for a request it cannot redirect: no redirect, a page."""
    return _page(400, "Something went wrong", "<h1>Something went wrong</h1>\n<p>You weren’t able to give access "
                 f'to the App. Go back and try logging in again.</p>\n<p id="reason">{html.escape(reason)}</p>')


def _redirect(location: str) -> Reply:
    return Reply(302, body=b"", content_type=HTML, headers={"Location": location, **NO_STORE})


def check_request(oauth: OAuthServer, query: Mapping[str, list[str]]) -> AuthRequest | str:
    """The authorization request of a query, or why it is refused."""
    def one(name: str) -> str:
        values = query.get(name) or [""]
        return values[0]

    if not one("client_id"):
        return "Missing required parameter [client_id]."
    if oauth.client_id is not None and one("client_id") != oauth.client_id:
        return "Value passed for the client id was invalid."
    redirect_uri = one("redirect_uri")
    if not re.match(r"^https?://[^\s/?#]+", redirect_uri) or "#" in redirect_uri:
        return "Value passed for the redirect uri was invalid."
    if oauth.redirect_uris is not None and redirect_uri not in oauth.redirect_uris:
        return "The redirect uri is not one of the app's callback URLs."
    if one("response_type") != "code":
        return "Value passed for the response type was invalid."
    scope = tuple(one("scope").split())
    if not scope or any(s not in SCOPES for s in scope):
        return "Value passed for the scope was invalid."
    if not one("state") or len(one("state")) > 500:
        return "Missing required parameter [state]."
    method = one("code_challenge_method") or "plain"
    challenge = one("code_challenge")
    if method not in ("S256", "plain") or not challenge or (method == "S256" and not CHALLENGE.fullmatch(challenge)):
        return "Value passed for the code challenge was invalid."
    return AuthRequest(one("client_id"), redirect_uri, tuple(dict.fromkeys(scope)), one("state"), challenge, method)


def authorize(oauth: OAuthServer, api: XHost, ctx: Ctx) -> Reply:
    request = check_request(oauth, ctx.query)
    if isinstance(request, str):
        return _refused(request)
    accounts = api.world.accounts()
    login = oauth.login if oauth.login in accounts else accounts[0]
    if oauth.auto_approve:
        return _redirect(request.redirect(code=oauth.code_for(login, request)))
    rid = oauth.pend(request)
    scopes = "\n".join(f"<li><code>{html.escape(s)}</code> {html.escape(SCOPES[s])}</li>" for s in request.scope)
    options = "\n".join(
        f'<option value="{a}"{" selected" if a == login else ""}>@{html.escape(api.world.user(a).username)} '
        f"({a})</option>" for a in accounts)
    body = (f"<h1>Authorize <code>{html.escape(request.client_id)}</code> to access your X account?</h1>\n"
            f"<p>This app will be able to:</p>\n<ul>\n{scopes}\n</ul>\n"
            f'<form method="post" action="{html.escape(ctx.path)}">\n'
            f'<input type="hidden" name="request" value="{rid}">\n'
            f'<p><label for="user_id">Signed in as</label> <select id="user_id" name="user_id">\n{options}\n'
            "</select></p>\n"
            '<p><button type="submit" name="decision" value="approve">Approve</button>\n'
            '<button type="submit" name="decision" value="deny">Deny</button></p>\n</form>\n'
            f"<p>You will be sent to <code>{html.escape(request.redirect_uri)}</code>.</p>")
    return _page(200, "Authorize app — X (simulator)", body)


def consent(oauth: OAuthServer, api: XHost, ctx: Ctx) -> Reply:
    form: dict[str, list[str]] = ctx.data or {}

    def one(name: str) -> str:
        return (form.get(name) or [""])[0]

    request = oauth.answer(one("request"))
    if request is None:
        return _refused("This authorization request has expired or was already answered.")
    if one("decision") == "deny":
        return _redirect(request.redirect(error="access_denied"))
    if one("decision") != "approve" or one("user_id") not in api.world.accounts():
        return _refused("Choose an account and Approve or Deny.")
    return _redirect(request.redirect(code=oauth.code_for(one("user_id"), request)))


# ----------------------------------------------------------------------------------- GET /2/users/me
def users_me(api: XHost, ctx: Ctx) -> Reply:
    assert ctx.user_id is not None
    allowed = {"user.fields": USER_FIELDS, "expansions": USER_EXPANSIONS, "tweet.fields": TWEET_FIELDS}
    errors: list[tuple[str, str, str]] = []
    lists: dict[str, tuple[str, ...]] = {}
    for name, values in ctx.query.items():
        if name not in allowed:
            errors.append((name, values[0], f"The query parameter [{name}] is not one of [{','.join(allowed)}]"))
            continue
        if len(values) > 1:
            errors.append((name, ",".join(values), f"The `{name}` query parameter can only be given once"))
            continue
        items = tuple(values[0].split(","))
        bad = [i for i in items if i not in allowed[name]]
        if bad or not values[0]:
            errors.append((name, values[0], f"The `{name}` query parameter value [{bad[0] if bad else values[0]}] "
                                            f"is not one of [{','.join(allowed[name])}]"))
        elif len(set(items)) != len(items):
            errors.append((name, values[0], f"The `{name}` query parameter value [{values[0]}] contains duplicate "
                                            "values"))
        else:
            lists[name] = items
    if errors:
        return invalid_request(errors)
    user: dict[str, Any] = api.world.user(ctx.user_id).as_dict()
    keys = {"id", "name", "username", *lists.get("user.fields", ())}
    return Reply(200, {"data": {k: v for k, v in user.items() if k in keys}})
