"""X API v2 DM field vocabulary in both spellings the simulator accepts (see `x_api`): the spec enums of
2.159 (the live API's) and 2.167 (xdk's), the parameters each takes (`SPECS`), and the 2.167 shapes of
2.159-shaped events, posts and users (`as_v2167`, `as_post`, `as_user_v2167`).
"""

from __future__ import annotations

from typing import Any

from dm_pipeline.simulator.model import EVENT_TYPES

# Enums exactly as in x-api-v2-dm-openapi.json (the OpenAPI test checks they still match).
DM_EVENT_FIELDS = ("attachments", "created_at", "dm_conversation_id", "entities", "event_type", "id",
                   "participant_ids", "referenced_tweets", "sender_id", "text")
EXPANSIONS = ("attachments.media_keys", "participant_ids", "referenced_tweets.id", "sender_id")
MEDIA_FIELDS = ("alt_text", "duration_ms", "height", "media_key", "non_public_metrics", "organic_metrics",
                "preview_image_url", "promoted_metrics", "public_metrics", "type", "url", "variants", "width")
USER_FIELDS = ("affiliation", "confirmed_email", "connection_status", "created_at", "description", "entities",
               "id", "is_identity_verified", "location", "most_recent_tweet_id", "name", "parody",
               "pinned_tweet_id", "profile_banner_url", "profile_image_url", "protected", "public_metrics",
               "receives_your_dm", "subscription", "subscription_type", "url", "username", "verified",
               "verified_followers_count", "verified_type", "withheld")
TWEET_FIELDS = ("article", "attachments", "author_id", "card_uri", "community_id", "context_annotations",
                "conversation_id", "created_at", "display_text_range", "edit_controls", "edit_history_tweet_ids",
                "entities", "geo", "id", "in_reply_to_user_id", "lang", "media_metadata", "non_public_metrics",
                "note_tweet", "organic_metrics", "possibly_sensitive", "promoted_metrics", "public_metrics",
                "referenced_tweets", "reply_settings", "scopes", "source", "suggested_source_links",
                "suggested_source_links_with_counts", "text", "withheld")
LIST_PARAMS: dict[str, tuple[str, ...]] = {
    "event_types": EVENT_TYPES, "dm_event.fields": DM_EVENT_FIELDS, "expansions": EXPANSIONS,
    "media.fields": MEDIA_FIELDS, "user.fields": USER_FIELDS, "tweet.fields": TWEET_FIELDS,
}
DM_EVENTS_PARAMS = ("dm_event.fields", "event_types", "expansions", "max_results", "media.fields",
                    "pagination_token", "tweet.fields", "user.fields")

# The same parameters as spec 2.167 (xdk's) spells them (the OpenAPI test checks they match that spec too).
V2159, V2167 = "2.159", "2.167"
DM_EVENT_FIELDS_V2167 = ("attachments", "created_at", "dm_conversation_id", "entities", "event_type", "id", "text")
EXPANSIONS_V2167 = ("attachments.media_keys", "participant_ids", "referenced_posts", "sender_id")
USER_FIELDS_V2167 = ("confirmed_email", "connection_status", "created_at", "description", "entities", "id",
                     "is_identity_verified", "location", "name", "parody", "profile_banner_url", "profile_image_url",
                     "protected", "public_metrics", "receives_your_dm", "subscribes_to_you", "subscription",
                     "subscription_type", "url", "username", "verified", "verified_followers_count", "verified_type",
                     "withheld")
POST_FIELDS = ("article", "article_title", "attachments", "card_uri", "community_id", "context_annotations",
               "conversation_id", "created_at", "display_text_range", "edit_controls", "entities", "geo", "id", "lang",
               "matched_media_notes", "media_metadata", "non_public_metrics", "note_post", "note_request_suggestions",
               "organic_metrics", "paid_partnership", "possibly_sensitive", "promoted_metrics", "public_metrics",
               "reply_settings", "scopes", "source", "suggested_source_links", "suggested_source_links_with_counts",
               "text", "withheld")
LIST_PARAMS_V2167: dict[str, tuple[str, ...]] = {
    "event_types": EVENT_TYPES, "dm_event.fields": DM_EVENT_FIELDS_V2167, "expansions": EXPANSIONS_V2167,
    "media.fields": MEDIA_FIELDS, "user.fields": USER_FIELDS_V2167, "post.fields": POST_FIELDS,
}
DM_EVENTS_PARAMS_V2167 = ("dm_event.fields", "event_types", "expansions", "max_results", "media.fields",
                          "pagination_token", "post.fields", "user.fields")
# spec -> (the parameters it takes, the enums of its list parameters)
SPECS: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    V2159: (DM_EVENTS_PARAMS, LIST_PARAMS), V2167: (DM_EVENTS_PARAMS_V2167, LIST_PARAMS_V2167),
}

# ------------------------------------------------------------------------------ 2.167 shapes
_ENTITY_KEYS = ("urls", "hashtags", "mentions", "cashtags")


def as_v2167(event: dict[str, Any]) -> dict[str, Any]:
    """A DmEvent in 2.159's shape (`world.truth`, `render_event`) as spec 2.167 shapes it: `referenced_posts`
    for `referenced_tweets`, the flattened entity lists in one `entities` object."""
    out: dict[str, Any] = {}
    entities: dict[str, Any] = {}
    for key, value in event.items():
        if key in _ENTITY_KEYS:
            entities[key] = value
        else:
            out["referenced_posts" if key == "referenced_tweets" else key] = value
    if entities:
        out["entities"] = entities
    return out


_POST_KEYS = {"edit_history_tweet_ids": "edit_history_post_ids", "referenced_tweets": "referenced_posts",
              "note_tweet": "note_post"}


def as_post(tweet: dict[str, Any]) -> dict[str, Any]:
    """A Tweet object (2.159) as a 2.167 Post (`public_metrics.retweet_count` is `repost_count` there)."""
    post = {_POST_KEYS.get(k, k): v for k, v in tweet.items()}
    if isinstance(post.get("public_metrics"), dict):
        post["public_metrics"] = {("repost_count" if k == "retweet_count" else k): v
                                  for k, v in post["public_metrics"].items()}
    return post


def as_user_v2167(user: dict[str, Any]) -> dict[str, Any]:
    """A User object (2.159) as 2.167 shapes it (`public_metrics.tweet_count` is `post_count`)."""
    if not isinstance(user.get("public_metrics"), dict):
        return user
    metrics = {("post_count" if k == "tweet_count" else k): v for k, v in user["public_metrics"].items()}
    return {**user, "public_metrics": metrics}

