"""Topics outside the scheme are refused with a reason a person can act on."""

import pytest

from ansim_protocol import topics
from ansim_protocol.errors import FrameError


@pytest.mark.parametrize("name", [
    "ansim/v1/dev/0002000/up",        # 7 digits
    "ansim/v1/dev/0002000G/up",       # not hex
    "ansim/v1/dev/0002000A/up",       # upper case: two spellings of one device are refused
    "ansim/v1/dev/00020001/cmd",      # unknown channel
    "ansim/v1/relay/00000001/down",   # relays only publish
    "ansim/v2/dev/00020001/up",       # other version
    "ansim/v1/dev/00020001/up/extra",
    "",
])
def test_bad_topics_are_refused(name):
    with pytest.raises(FrameError) as caught:
        topics.parse(name)
    assert caught.value.reason == "topic"


def test_wildcard_filters_match_the_scheme():
    assert topics.UPLINK_FILTER == "ansim/v1/dev/+/up"
    assert topics.topic(0x20001, topics.UP) == "ansim/v1/dev/00020001/up"
    assert topics.parse("ansim/v1/relay/0000000a/up") == ("relay", 10, "up")
