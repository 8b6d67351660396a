"""URL predicates match what a marketer means: the page's path, by default."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadpulse.engine import Scorer
from leadpulse.events import Event
from leadpulse.model import load_model, parse_model
from leadpulse.urls import url_host, url_path


@pytest.mark.parametrize(
    ("url", "path", "host"),
    [
        ("https://acme.io/pricing", "/pricing", "acme.io"),
        ("https://ACME.IO/Pricing/?utm_source=google&utm_medium=cpc#plans", "/Pricing", "acme.io"),
        ("https://www.acme.io/compare?utm_source=g", "/compare", "www.acme.io"),
        ("/hubspot-alternatives?ref=1", "/hubspot-alternatives", None),
        ("https://acme.io", "/", "acme.io"),
        ("https://acme.io/?gclid=abc", "/", "acme.io"),
        ("https://acme.io///", "/", "acme.io"),
        ("https://acme.io/pricing//", "/pricing", "acme.io"),
        ("https://acme.io//pricing//plans", "/pricing/plans", "acme.io"),
        ("//cdn.acme.io/pricing/", "/pricing", "cdn.acme.io"),
        ("https://user:pw@Acme.io.:8443/x/", "/x", "acme.io"),
        ("http://[::1]:8080/a", "/a", "[::1]"),
        ("https://acme.io/%7Ejane/pric%69ng", "/~jane/pricing", "acme.io"),
        ("https://acme.io/%C3%BCber-uns/", "/über-uns", "acme.io"),
        ("https://acme.io/a%2Fb/../c", "/a/c", "acme.io"),  # decoded first: %2F is a slash
        ("https://acme.io/blog/../pricing/./plans", "/pricing/plans", "acme.io"),
        ("https://acme.io/../../pricing", "/pricing", "acme.io"),
        ("https://acme.io/pricing;jsessionid=1", "/pricing;jsessionid=1", "acme.io"),
        ("  https://acme.io/pricing \n", "/pricing", "acme.io"),
        ("https://acme.io?next=/pricing", "/", "acme.io"),
        ("https://acme.io#/pricing", "/", "acme.io"),
        ("/redirect?to=https://evil.io/pricing", "/redirect", None),
        ("acme.io/pricing", "acme.io/pricing", None),  # no scheme and no //: a path as it stands
        ("mailto:jane@acme.io", "mailto:jane@acme.io", None),
        ("?utm_source=g", "", None),
        ("", "", None),
    ],
)
def test_the_normal_form(url: str, path: str, host: str | None) -> None:
    assert url_path(url) == path
    assert url_host(url) == host


@given(st.one_of(st.text(max_size=60), st.lists(st.sampled_from(["/", ".", "..", "%2F", "%2E", "a", "?", "#", "//"]), max_size=12).map("".join).map(lambda p: "https://acme.io" + p)))
def test_any_string_has_a_path_and_normalising_twice_changes_nothing(url: str) -> None:
    path = url_path(url)
    if path.startswith("/") and "%" not in path:  # decoding twice could decode a decoded %25 again
        assert url_path(path) == path


def pages(scorer: Scorer, url: str) -> set[str]:
    event = Event("e", "web", "page_view", 0, "l", None, {"url": url}, {})
    return {rule for rule, _ in scorer.matched(event)} - {"page_view"}


DEFAULT = [
    # the cases
    ("https://acme.io/compare?utm_source=g", {"competitor_comparison"}),
    ("/hubspot-alternatives?ref=1", {"competitor_comparison"}),
    ("https://acme.io/blog/pricing-strategies-for-saas", set()),
    # pricing: the page and its sub-pages, however the URL is dressed
    ("https://acme.io/pricing", {"pricing_page"}),
    ("https://WWW.ACME.IO/pricing/?utm_source=linkedin&utm_campaign=q4#enterprise", {"pricing_page"}),
    ("https://acme.io/Pricing/Enterprise/", {"pricing_page"}),
    ("https://acme.io/pricing-faq", set()),
    ("https://acme.io/?redirect=/pricing", set()),
    ("https://acme.io/docs/pricing", set()),
    # competitor comparison
    ("https://acme.io/compare/hubspot?gclid=Cj0KCQ", {"competitor_comparison"}),
    ("https://acme.io/vs/marketo/", {"competitor_comparison"}),
    ("https://acme.io/vs-pardot", {"competitor_comparison"}),
    ("https://acme.io/leadpulse-vs-hubspot#table", {"competitor_comparison"}),
    ("https://acme.io/alternatives/", {"competitor_comparison"}),
    ("https://acme.io/marketo-alternative", {"competitor_comparison"}),
    ("https://acme.io/blog/compare-your-funnel", set()),
    ("https://acme.io/versions", set()),
    # case studies
    ("https://acme.io/customers/globex?utm_source=newsletter", {"case_study"}),
    ("https://acme.io/case-studies/initech/", {"case_study"}),
    ("https://acme.io/customers/", set()),  # the index, not a story
]


@pytest.mark.parametrize(("url", "rules"), DEFAULT)
def test_the_default_models_url_rules(url: str, rules: set[str]) -> None:
    assert pages(Scorer(load_model()), url) == rules


MODEL = """
version: parts
categories: {b: {}}
rules:
  - {id: path, category: b, points: 1, when: {source: web, type: page_view, url: {equals: /pricing}}}
  - {id: full, category: b, points: 1, when: {source: web, type: page_view, url: {part: full, contains: "utm_source=linkedin"}}}
  - {id: host, category: b, points: 1, when: {source: web, type: page_view, url: {part: host, in: [docs.acme.io]}}}
  - {id: from_g2, category: b, points: 1, when: {source: web, type: page_view, referrer: {part: host, glob: "*g2.com"}}}
  - {id: landing, category: b, points: 1, when: {source: web, type: page_view, landing_page: {part: path, equals: /webinar}}}
  - {id: raw, category: b, points: 1, when: {source: web, type: page_view, landing_page: {contains: "?"}}}
stages: [{name: lead, min_score: 0}, {name: mql, min_score: 50}]
"""


def test_part_picks_the_path_the_whole_url_or_the_host() -> None:
    scorer = Scorer(parse_model(MODEL))

    def fired(**props: object) -> set[str]:
        return {rule for rule, _ in scorer.matched(Event("e", "web", "page_view", 0, "l", None, props, {}))}

    assert fired(url="https://acme.io/pricing/?utm_source=linkedin") == {"path", "full"}
    assert fired(url="https://Docs.Acme.io:443/pricing") == {"path", "host"}
    assert fired(url="/pricing", referrer="https://www.G2.com/products/acme/reviews") == {"path", "from_g2"}
    assert fired(url="/x", referrer="/internal") == set()  # a relative referrer has no host
    # a property that is not url or referrer is the value as sent, unless `part` says it is a URL
    assert fired(url="/x", landing_page="https://acme.io/webinar/?utm_source=x") == {"landing", "raw"}
    # a value that is not a string has no parts: it stays what it is
    assert fired(url=["/pricing"]) == set()


def test_trait_predicates_take_parts_too() -> None:
    scorer = Scorer(parse_model(MODEL + "fit:\n  rules:\n    - {id: site, category: b, points: 5,"
                                "\n       when: {website: {part: host, glob: '*.io'}}}\n"))
    assert scorer.fit({"website": "https://WWW.Acme.IO/about"}) == {"site": 5.0}
    assert scorer.fit({"website": "https://acme.com"}) == {}


def test_each_part_is_worked_out_once_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    # Three default rules read the path of a page view's url: one normalisation per event.
    from leadpulse import engine

    calls: list[str] = []
    real = engine.url_path
    monkeypatch.setattr(engine, "url_path", lambda url: calls.append(url) or real(url))
    scorer = Scorer(load_model())
    assert pages(scorer, "https://acme.io/pricing?x=1") == {"pricing_page"}
    assert calls == ["https://acme.io/pricing?x=1"]
    scorer.matched(Event("e", "web", "demo_request", 0, "l", None, {"url": "https://acme.io/demo"}, {}))
    assert len(calls) == 1  # no rule of web/demo_request reads a URL: nothing worked out
