"""Sinks: the destinations flows deliver to. One module per kind."""

from __future__ import annotations

from relay.config import FileSinkConfig, HttpSinkConfig, NatsJetStreamSinkConfig, SinkConfig
from relay.sinks.base import Sink
from relay.sinks.file import FileSink
from relay.sinks.http import HttpSink
from relay.sinks.nats_jetstream import NatsJetStreamSink
from relay.sinks.redis_stream import RedisStreamSink
from relay.timers import Deadlines

__all__ = ["Sink", "build_sink"]


def build_sink(config: SinkConfig, deadlines: Deadlines) -> Sink:
    """The running sink for ``config``."""
    if isinstance(config, HttpSinkConfig):
        return HttpSink(config, deadlines)
    if isinstance(config, FileSinkConfig):
        return FileSink(config, deadlines)
    if isinstance(config, NatsJetStreamSinkConfig):
        return NatsJetStreamSink(config)
    return RedisStreamSink(config)
