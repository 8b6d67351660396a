"""`leadpulse bench`: throughput, latency and memory of the real worker, side by side with a naive
Faust worker and with the two ceilings no worker can beat on this machine.

One invocation starts its own broker (Tansu) and redis-server, produces one event set (synthetic
journeys of `--leads` leads: a realistic mix of sources and Zipf-like activity; the first
`--events` of them in time order, `eventset`), and measures, each stage alone on the machine:

1. `ceilings`, broker read path: raw aiokafka `getmany()` over the event set, no processing;
2. `ceilings`, Redis write path: the score updates of the event set through the project's batched
   Lua path (recorded from LeadStore once, then replayed as fast as Redis takes them), no Kafka;
3. `baseline`: a naive Faust agent (`async for event in stream`, one LeadStore call, so one Redis
   round trip, per event) with the same scoring rules;
4. `leadpulse`: `leadpulse worker` end to end (consume → validate → score → Redis → handoffs →
   commit), and its RSS.

Then: Redis bytes per lead (`memory`: state, indexes and the dedup window apart, measured at
`--memory-leads` leads by copying the measured leads), two workers in one group with a
rebalance mid-run (`rebalance`: their final scores must equal the one-worker run's), latency
from `occurred_at` to the handoff record at a fixed offered load (`latency`), and, when asked
for, the worker's RSS over a long stream (`rss`).

Rows 3 and 4 are measured from each process's own account of its work (`measure.Work`: events
handled, wall clock and CPU time at its first batch received and its last one finished; the
worker's `leadpulse_work_seconds`), not from polling it: polls only drive the progress bars and
decide when a stage is done, so a run shorter than a poll interval measures what it did. Redis's
and the broker's CPU over that span come from a `measure.CpuTrace`; rows 1 and 2 time themselves
in-process.

Every process it starts is stopped on exit; ports are free loopback ports; data is scratch.
The product never imports this package: `leadpulse bench` loads it when it is run.
"""
