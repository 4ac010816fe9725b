import time, uuid
from dm_pipeline.models import Account, Provider
from dm_pipeline.runner import sync_accounts
from dm_pipeline.sync import RunLimits
from tests.conftest import sim_account
from tests.reliability.test_hostile_endpoint import CONVERSATION, ME, hostile  # noqa: F401
import pytest

@pytest.mark.parametrize("hostile", ["trickle_body", "trickle_headers"], indirect=True)
def test_default_deadline(engine, sim, hostile, monkeypatch):
    mode, url = hostile
    normal = sim_account(sim, sim.world.accounts()[0], monkeypatch, key="normal")
    monkeypatch.setenv("DM_TEST_HOSTILE_TOKEN", "t")
    bad = Account(key="hostile", provider=Provider.X, user_id=ME, base_url=url, token_env="DM_TEST_HOSTILE_TOKEN", conversation_ids=(CONVERSATION,))
    t0 = time.monotonic()
    results = sync_accounts(engine, [normal, bad], f"h-{uuid.uuid4()}", RunLimits())
    print(f"\nMEASURED {mode}: {time.monotonic()-t0:.1f}s", [(s.stream_key, s.status.value, s.error_code) for r in results for s in r.streams if r.account_key == 'hostile'])
