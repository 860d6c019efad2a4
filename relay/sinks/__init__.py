"""Sinks: the destinations flows deliver to. One module per kind."""

from __future__ import annotations

from relay.config import FileSinkConfig, HttpSinkConfig, SinkConfig
from relay.sinks.base import LimitedSink, Sink
from relay.sinks.file import FileSink
from relay.sinks.http import HttpSink
from relay.sinks.redis_stream import RedisStreamSink
from relay.timers import Deadlines

__all__ = ["LimitedSink", "Sink", "build_sink"]


def build_sink(config: SinkConfig, deadlines: Deadlines) -> LimitedSink:
    """The running sink for ``config``, refusing deliveries past its ``max_in_flight``."""
    sink: Sink
    if isinstance(config, HttpSinkConfig):
        sink = HttpSink(config, deadlines)
    elif isinstance(config, FileSinkConfig):
        sink = FileSink(config, deadlines)
    else:
        sink = RedisStreamSink(config)
    return LimitedSink(sink, config.max_in_flight)
