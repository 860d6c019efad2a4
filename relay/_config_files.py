"""What a flow whose sink is a ``files`` sink may be: checked once every sink is known.

Such a flow serves files, it takes no data: GET and HEAD only (its default), a prefix
path (the rest of the request path names the file beneath the sink's root), and no tees
(nothing arrives to copy). A files sink is never a tee either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from relay._config_read import Problems
from relay.config import DEFAULT_METHODS, FilesSinkConfig, FlowConfig, SinkConfig

#: what a files flow serves when its methods are not given
FILE_METHODS = ("GET", "HEAD")


def adapt_file_flows(problems: Problems, flows: tuple[FlowConfig, ...],
                     sinks: Mapping[str, SinkConfig]) -> tuple[FlowConfig, ...]:
    """``flows`` with files flows given their default methods; problems recorded."""
    adapted = []
    for i, flow in enumerate(flows):
        key = f"flow[{i}]"
        named = f" (flow '{flow.name}')" if flow.name else ""
        for j, copy in enumerate(flow.tee):
            if isinstance(sinks.get(copy), FilesSinkConfig):
                problems.add(f"{key}.tee[{j}]", f"files sink '{copy}' serves files and takes no copies{named}")
        if not isinstance(sinks.get(flow.sink), FilesSinkConfig):
            adapted.append(flow)
            continue
        if flow.path and not flow.path.endswith("/"):
            problems.add(f"{key}.path", f"a files flow's path must end with '/': what follows it names "
                                        f"the file beneath the sink's root{named}")
        if flow.tee:
            problems.add(f"{key}.tee", f"a files flow takes no body, so there is nothing to copy{named}")
        if flow.methods is DEFAULT_METHODS:
            flow = dataclasses.replace(flow, methods=FILE_METHODS)
        else:
            for j, method in enumerate(flow.methods):
                if method not in FILE_METHODS:
                    problems.add(f"{key}.methods[{j}]", f"a files flow serves GET and HEAD only, not {method}{named}")
        adapted.append(flow)
    return tuple(adapted)
