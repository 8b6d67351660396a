"""The worker's bounded caches on /metrics: how full each is, counted when scraped (nothing on
the hot path), and the capacity it stops at — what tells a soak's warm-up from growth."""

from __future__ import annotations

from leadpulse.bounded import Recent, RecentIds
from leadpulse.metrics import Metrics


def test_a_cache_reports_its_entries_at_each_scrape_and_its_capacity() -> None:
    metrics = Metrics()
    links: Recent[str, str] = Recent(3)
    ids: RecentIds[str] = RecentIds(2)
    metrics.cache("visitor_links", links, links.capacity)
    metrics.cache("published_handoffs", ids, ids.capacity)

    def value(name: str, cache: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"cache": cache})

    assert value("leadpulse_cache_entries", "visitor_links") == 0
    assert value("leadpulse_cache_capacity", "visitor_links") == 3
    for i in range(5):
        links[f"anon-{i}"] = f"lead-{i}"
    ids.add("h-1")
    assert value("leadpulse_cache_entries", "visitor_links") == 3  # full: it stops at its capacity
    assert value("leadpulse_cache_entries", "published_handoffs") == 1
    assert value("leadpulse_cache_capacity", "published_handoffs") == 2
    links.clear()  # a key-space switch empties the visitor links (LeadStore.use_space)
    assert value("leadpulse_cache_entries", "visitor_links") == 0
