"""Contract tests: the simulator walked by the providers' own client libraries (X's `xdk`, `tweepy`,
Xquik's `x-twitter-scraper`, `requests-oauthlib`), over real loopback HTTP, compared with the simulator's
truth; and the checks of the project's own X client that those libraries' findings led to."""

from __future__ import annotations

import pytest


@pytest.fixture
def insecure_oauthlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """oauthlib refuses token URLs that are not https; the simulator is plain http on loopback."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
