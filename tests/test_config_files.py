"""Configuration of files sinks and the flows that use them: what loads, what is refused,
each problem with its key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import FilesSinkConfig
from test_config import doc, here, load, marked_line, problems_of  # noqa: F401 - here is a fixture

FILES = '[sink.files]\ntype = "files"\nroot = "www"'
FLOW = '[[flow]]\nname = "downloads"\npath = "/downloads/"\nauth = "none"\nsink = "files"'


def test_a_files_sink_loads_with_its_defaults(here: Path) -> None:
    (here / "www").mkdir()
    config = load(here, doc(sinks=FILES, flows=FLOW))
    assert config.sinks["files"] == FilesSinkConfig(name="files", root=str(here / "www"))
    assert config.sinks["files"].delivery == "x-sendfile"
    assert config.flows[0].methods == ("GET", "HEAD")


def test_delivery_relay_and_explicit_methods(here: Path) -> None:
    (here / "www").mkdir()
    config = load(here, doc(sinks=FILES + '\ndelivery = "relay"\nmax_in_flight = 8',
                            flows=FLOW + '\nmethods = ["GET"]'))
    sink = config.sinks["files"]
    assert isinstance(sink, FilesSinkConfig)
    assert (sink.delivery, sink.max_in_flight, config.flows[0].methods) == ("relay", 8, ("GET",))


CASES = [
    ('[sink.files]  # HERE\ntype = "files"', FLOW, "sink.files.root", "required key 'root' is missing"),
    ('[sink.files]\ntype = "files"\nroot = "nowhere"  # HERE', FLOW, "sink.files.root", "is not a directory"),
    ('[sink.files]\ntype = "files"\nroot = "afile"  # HERE', FLOW, "sink.files.root", "is not a directory"),
    (FILES + '\ndelivery = "lighttpd"  # HERE', FLOW, "sink.files.delivery", "x-sendfile"),
    (FILES + '\nindex = "index.html"  # HERE', FLOW, "sink.files.index", "unknown key 'index'"),
    (FILES, FLOW + '\nmethods = ["GET", "POST"]  # HERE', "flow[0].methods[1]", "GET and HEAD only, not POST"),
    (FILES, '[[flow]]\nname = "one"\npath = "/report.pdf"  # HERE\nauth = "none"\nsink = "files"',
     "flow[0].path", "must end with '/'"),
    (FILES + '\n\n[sink.api]\ntype = "http"\nurl = "http://127.0.0.1:9000"', FLOW + '\ntee = ["api"]  # HERE',
     "flow[0].tee", "nothing to copy"),
    (FILES + '\n\n[sink.api]\ntype = "http"\nurl = "http://127.0.0.1:9000"',
     '[[flow]]\nname = "up"\npath = "/up/"\nauth = "none"\nsink = "api"\ntee = ["files"]  # HERE',
     "flow[0].tee[0]", "serves files and takes no copies"),
]


@pytest.mark.parametrize("sinks, flows, key, message", CASES)
def test_a_files_mistake_is_refused_with_its_key_and_line(here: Path, sinks: str, flows: str, key: str,
                                                          message: str) -> None:
    (here / "www").mkdir()
    (here / "afile").write_text("not a directory")
    text = doc(sinks=sinks, flows=flows)
    found = problems_of(here, text)
    assert [p.key for p in found] == [key], found
    assert message in found[0].message
    assert found[0].line == marked_line(text)
