"""Redis keys of any lead or visitor id stay in one slot (keys.py), and the store works with them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.crc import key_slot

from leadpulse.keys import Keys
from leadpulse.model import ScoringModel
from leadpulse.state import ANONYMOUS, SCORED, LeadStore

from tests.support.fixtures import DAY, T0, event

BRACES = ["}x", "{x}", "a{b}c", "}", "{", "{}", "}{", "x}", "{{}}"]
IDS = st.text(st.sampled_from("{}ab:é😀 "), min_size=1, max_size=12)


def slots(keys: tuple[str, ...]) -> set[int]:
    return {key_slot(k.encode()) for k in keys}


@settings(deadline=None)  # the first call builds the slot tags (~0.5 s)
@given(ident=IDS)
def test_every_key_of_a_lead_or_visitor_shares_one_slot(ident: str) -> None:
    keys = Keys(cluster=True)
    assert len(slots(keys.lead(ident))) == 1
    assert len(slots(keys.anon(ident))) == 1
    # The lead's index shard hashes to the lead's slot too (one script touches both).
    due, top = keys.indexes(keys.shard(ident))
    assert slots((due, top)) == slots(keys.lead(ident))


@given(a=IDS, b=IDS)
def test_different_ids_never_share_a_key(a: str, b: str) -> None:
    keys = Keys()
    if a != b:
        assert not set(keys.lead(a)) & set(keys.lead(b))
        assert not set(keys.anon(a)) & set(keys.anon(b))
    assert not set(keys.lead(a)) & set(keys.anon(b))


def test_ids_without_braces_keep_their_keys_and_ids_with_braces_are_encoded() -> None:
    keys = Keys()
    assert keys.lead("jane@acme.io").state == "lp:l{jane@acme.io}:v"  # as before: no migration
    assert keys.anon("cookie-1").alias == "lp:a{cookie-1}:a"
    assert keys.lead("}x").state == "lp:L{fXg}:v"
    assert keys.anon("a{b}c").log == "lp:A{YXtifWM}:s"
    # An id that happens to be the encoding of another stays apart: another letter.
    assert keys.lead("fXg").state == "lp:l{fXg}:v" != keys.lead("}x").state
    with pytest.raises(ValueError, match="braces"):
        Keys("lp{x}")


async def test_the_store_scores_merges_and_sweeps_ids_with_braces(redis: Redis, model: ScoringModel) -> None:
    store = LeadStore(redis, model)
    batch = [event("web", "demo_request", T0 + i, lead=lead) for i, lead in enumerate(BRACES)]
    batch += [event("web", "page_view", T0 + 10, lead=lead, url="/pricing") for lead in BRACES]  # 76: MQL
    batch += [event("web", "page_view", T0 + 20, lead=None, anon="}cookie{", url="/pricing")]
    result = await store.apply([(e, f"t:0:{i}") for i, e in enumerate(batch)])
    assert result.outcomes == [SCORED] * 2 * len(BRACES) + [ANONYMOUS]
    link = event("profile", "identify", T0 + 30, lead="}x", anon="}cookie{", traits={"seniority": "vp"})
    await store.apply([(link, "t:0:99")])
    view = await store.view("}x", T0 + 30)
    assert view is not None and {"demo_request", "pricing_page", "seniority_exec"} <= {c.rule_id for c in view.explanation.contributions}
    for lead in BRACES:
        assert (await store.view(lead, T0 + 30)) is not None, lead
    assert {v.lead_id for v in await store.top(50, T0 + 40)} == set(BRACES)
    swept = await store.sweep(T0 + 3000 * DAY)
    assert {t.lead_id for t in swept} == set(BRACES)
    await store.ack(swept)
    assert await store.sweep(T0 + 3000 * DAY) == []
    # Every id here holds a brace: nothing was written under a raw id.
    assert [k async for k in redis.scan_iter("lp:[la]{*")] == []
    assert len([k async for k in redis.scan_iter("lp:L{*")]) >= len(BRACES)
