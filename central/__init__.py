"""The reference central queue service (runs next to the broker, not on the Pi).

Small rooms, one job each:

- `central.clock`: the one place the service takes time from (system, simulated, fake).
- `central.queue`: the queue as a pure state machine: commands in, desired state out.
- `central.store`: the state in SQLite (WAL); a restart rebuilds the queue from it.
- `central.stats`: live and per-day figures as a JSON-ready dict.
- `central.service`: the three together: a command is applied, stored and its desired
  state returned in one step (what the MQTT wiring calls).
"""
