"""The local stack, outside the product's import graph: an embedded Tansu broker and
redis-server (`embedded`), simulated buyer journeys (`simulate`), `leadpulse produce`
(`produce`) and `leadpulse dev` (`runner`). The worker imports nothing from here."""
