"""Synthetic but realistic buyer journeys, for `leadpulse dev`, `produce` and the benchmark.

A share of visitors browse anonymously, identify through a form, read emails, attend a
webinar, look at pricing and ask for a demo; most stay cold; some unsubscribe. Activity per
lead is skewed (Zipf-like), as it is in real traffic.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

SENIORITY = ("c_level", "vp", "director", "manager", "lead", "individual", "intern")
INDUSTRY = ("software", "saas", "fintech", "e-commerce", "manufacturing", "retail", "education", "government")
DEPARTMENT = ("marketing", "sales", "engineering", "finance", "operations", "hr")
DOMAINS = ("acme.io", "globex.com", "initech.com", "umbrella.co", "hooli.com", "gmail.com", "yahoo.com")
TITLES = {
    "c_level": "Chief Revenue Officer", "vp": "VP Marketing", "director": "Director of Sales",
    "manager": "Marketing Manager", "lead": "Team Lead", "individual": "Analyst", "intern": "Intern",
}
PAGES = ("/", "/blog/scoring-101", "/product", "/customers/acme", "/pricing", "/compare/hubspot", "/docs")


def _traits(rng: random.Random) -> dict[str, Any]:
    seniority = rng.choice(SENIORITY)
    domain = rng.choice(DOMAINS)
    return {
        "email": f"person{rng.randrange(10**9)}@{domain}",
        "job_title": TITLES[seniority],
        "seniority": seniority,
        "department": rng.choice(DEPARTMENT),
        "company": domain.split(".")[0].title(),
        "company_domain": domain,
        "employees": rng.choice([3, 12, 60, 250, 1200, 8000]),
        "industry": rng.choice(INDUSTRY),
        "annual_revenue": rng.choice([2e5, 3e6, 2.5e7, 4e8]),
        **({"budget": "approved"} if rng.random() < 0.3 else {}),
        **({"timeline": rng.choice(["this_quarter", "next_year"])} if rng.random() < 0.4 else {}),
    }


def journey(lead_id: str, rng: random.Random, start_ms: int, intensity: float = 1.0) -> list[dict[str, Any]]:
    """One lead's events in time order; `intensity` scales how active the lead is."""
    t = start_ms
    out: list[dict[str, Any]] = []
    n = 0

    def emit(source: str, type_: str, lead: str | None = lead_id, anon: str | None = None, **extra: Any) -> None:
        nonlocal t, n
        t += rng.randint(1_000, 600_000)
        n += 1
        event: dict[str, Any] = {"event_id": f"{lead_id}-{n}", "source": source, "type": type_, "occurred_at": t}
        if lead:
            event["lead_id"] = lead
        if anon:
            event["anonymous_id"] = anon
        event.update(extra)
        out.append(event)

    hot = rng.random() < 0.25 * min(intensity, 2.0)
    cookie = f"anon-{lead_id}" if rng.random() < 0.5 else None
    if cookie:
        for _ in range(rng.randint(1, 4)):
            emit("web", "page_view", lead=None, anon=cookie, properties={"url": "https://example.com" + rng.choice(PAGES[:4])})
    emit("profile", "identify", anon=cookie, traits=_traits(rng))
    for _ in range(max(1, int(rng.expovariate(1 / (3 * intensity))))):
        emit("email", "delivered")
        if rng.random() < 0.6:
            emit("email", "open")
            if rng.random() < 0.4:
                emit("email", "click", properties={"url": "https://example.com/blog"})
    if rng.random() < 0.05:
        emit("email", "unsubscribe")
        return out
    if hot or rng.random() < 0.3:
        emit("webinar", "registered", properties={"webinar_id": "w1"})
        if rng.random() < 0.7:
            emit("webinar", "attended", properties={"webinar_id": "w1", "minutes": rng.choice([8, 25, 45, 60])})
        else:
            emit("webinar", "no_show", properties={"webinar_id": "w1"})
    for _ in range(int(rng.expovariate(1 / (2 * intensity))) + (3 if hot else 0)):
        emit("web", "page_view", properties={"url": "https://example.com" + rng.choice(PAGES)})
    if hot:
        emit("web", "page_view", properties={"url": "https://example.com/pricing"})
        emit("web", "page_view", properties={"url": "https://example.com/compare/hubspot"})
        if rng.random() < 0.6:
            emit("web", "demo_request", properties={"url": "https://example.com/demo"})
            if rng.random() < 0.5:
                emit("crm", "sql_accepted")
    return out


def journeys(n_leads: int, seed: int = 7, start_ms: int = 1_790_000_000_000, prefix: str = "lead") -> Iterator[dict[str, Any]]:
    """Events of `n_leads` journeys, interleaved by time (a k-way merge), deterministic per seed."""
    import heapq

    rng = random.Random(seed)
    streams = []
    for i in range(n_leads):
        # Zipf-like activity: a few leads are very active, most are not.
        intensity = min(8.0, 1.0 / (rng.random() ** 0.7 + 0.05))
        offset = rng.randint(0, max(1, n_leads) * 2_000)
        streams.append(iter(journey(f"{prefix}-{i}", rng, start_ms + offset, intensity)))
    heap: list[tuple[int, int, dict[str, Any]]] = []
    for i, stream in enumerate(streams):
        first = next(stream, None)
        if first:
            heap.append((first["occurred_at"], i, first))
    heapq.heapify(heap)
    while heap:
        _, i, event = heapq.heappop(heap)
        yield event
        following = next(streams[i], None)
        if following:
            heapq.heappush(heap, (following["occurred_at"], i, following))


def topic_for(event: dict[str, Any], prefix: str = "events.") -> str:
    return f"{prefix}{event.get('source', 'web')}"


def key_for(event: dict[str, Any]) -> bytes:
    """Partition by lead (or visitor): per-lead order comes from one partition."""
    return str(event.get("lead_id") or event.get("anonymous_id") or event.get("event_id")).encode()
